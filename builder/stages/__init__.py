"""The stages of a build, in order. ``corpus build`` runs ``build_stages()``; ``corpus
<stage> --run DIR`` runs one of them (``stage_named``). See ``builder.stages.base`` for the
contract and how to add a stage."""

from __future__ import annotations

from builder.stages.assemble import AssembleStage, ReportStage
from builder.stages.base import PartitionStage, RunContext, Stage
from builder.stages.dedup import DecontamStage, DedupStage
from builder.stages.filter import FilterStage
from builder.stages.generate import GenerateStage
from builder.stages.quality import QualityStage, SemDedupStage
from builder.stages.walk import SyllabiStage, WalkStage


def build_stages() -> list[Stage]:
    """The build: every stage, in order."""
    return [
        SyllabiStage(),
        WalkStage(),
        GenerateStage(),
        FilterStage(),
        QualityStage(),
        DedupStage(),
        SemDedupStage(),
        DecontamStage(),
        AssembleStage(),
        ReportStage(),
    ]


#: Stage names in build order.
STAGES: tuple[str, ...] = tuple(s.name for s in build_stages())


def stage_named(name: str) -> Stage:
    """A fresh instance of the stage called ``name`` (KeyError if there is none)."""
    for stage in build_stages():
        if stage.name == name:
            return stage
    raise KeyError(name)


__all__ = [
    "STAGES",
    "PartitionStage",
    "RunContext",
    "Stage",
    "build_stages",
    "stage_named",
]
