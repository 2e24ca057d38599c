"""The build's public entry points, kept importable from their wave-1 home.

The build is now a list of stages (``builder.stages``) run over a run directory
(``builder.run``); this module only re-exports what callers of ``builder.pipeline`` use.
"""

from __future__ import annotations

from builder.run.build import BuildSummary, build, run_stages
from builder.run.inputs import (
    benchmark_files,
    check_inputs,
    missing_syllabi,
    node_statuses,
    open_walk,
    selected_subjects,
    syllabus_statuses,
    walk_units,
)
from builder.run.ledger import Ledger, MeteredLLM
from builder.run.markers import Markers
from builder.run.paths import run_dir, with_run
from builder.run.plan import PlanRow, PlanSummary, plan
from builder.stages import STAGES

__all__ = [
    "STAGES",
    "BuildSummary",
    "Ledger",
    "Markers",
    "MeteredLLM",
    "PlanRow",
    "PlanSummary",
    "benchmark_files",
    "build",
    "check_inputs",
    "missing_syllabi",
    "node_statuses",
    "open_walk",
    "plan",
    "run_dir",
    "run_stages",
    "selected_subjects",
    "syllabus_statuses",
    "walk_units",
    "with_run",
]
