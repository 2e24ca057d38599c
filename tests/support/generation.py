"""Generated rows for the filter and verification tests, made by the build's own path.

``generate_rows`` writes a tiny project (one discipline, one subject, the given topics, the
real templates) into its own directory and runs ``corpus generate`` on it: the walk stage
walks each topic once, the generate stage renders the requests, sends them through the real
engine to the loopback server at ``base_url`` (or the embedded model when it is None) and
writes its Parquet partitions, which are read back with ``read_run_generated``. Every call
gets its own run directory and LLM cache, so calls in one test never share answers, and
nothing outside the given directory is touched (safe under pytest-xdist).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from builder.cli import cli
from builder.stages.generate import read_run_generated
from tests.support.project import ROOT, to_toml

__all__ = ["Generated", "generate_rows", "run_generate", "write_generate_project"]


@dataclass
class Generated:
    """What one ``corpus generate`` left: its rows in plan order, counters and exit."""

    rows: list[dict[str, Any]]
    #: the generate stage's counters (planned, reused, sent, received, by_status...)
    counters: dict[str, Any]
    exit_code: int
    output: str
    run_dir: Path
    #: the library error the command raised (``main`` would print it and exit 2), if any
    error: BaseException | None


def _taxonomy(discipline: tuple[str, str], subject: tuple[str, str], topics: dict[str, str]) -> str:
    lines = [
        f"id: {discipline[0]}",
        f"name: {json.dumps(discipline[1])}",
        "level: discipline",
        "children:",
        f"  - id: {subject[0]}",
        f"    name: {json.dumps(subject[1])}",
        "    level: subject",
        "    children:",
    ]
    for topic_id, name in topics.items():
        lines.append(f"      - {{id: {topic_id}, name: {json.dumps(name)}, level: topic}}")
    return "\n".join(lines) + "\n"


def write_generate_project(
    root: Path,
    base_url: str | None,
    topics: dict[str, str],
    *,
    templates: list[str],
    documents_per_unit: int = 1,
    evolve: bool = False,
    llm: dict[str, Any] | None = None,
    generate: dict[str, Any] | None = None,
    discipline: tuple[str, str] = ("mathematics", "Mathematics"),
    subject: tuple[str, str] = ("calculus", "Calculus"),
) -> Path:
    """A project in ``root`` whose walk is one unit per topic (id -> name); the config path.

    ``base_url`` None leaves ``[llm]`` empty: the embedded model. ``llm`` and ``generate``
    add keys to those sections.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "taxonomy").mkdir(exist_ok=True)
    (root / "taxonomy" / f"{discipline[0]}.yaml").write_text(
        _taxonomy(discipline, subject, topics), encoding="utf-8"
    )
    llm_section: dict[str, Any] = {}
    if base_url is not None:
        llm_section = {"base_url": base_url, "model": "fake-model"}
    llm_section.update(llm or {})
    sections = {
        "llm": llm_section,
        "taxonomy": {"dir": "taxonomy"},
        "syllabus": {"generate_missing": False},
        "walk": {"seed": 1},
        "generate": {
            "templates_dir": str(ROOT / "templates"),
            "templates": templates,
            "documents_per_unit": documents_per_unit,
            "evolve": evolve,
            **(generate or {}),
        },
    }
    config = root / "corpus.toml"
    config.write_text(to_toml(sections), encoding="utf-8")
    return config


def run_generate(config: Path) -> Generated:
    """``corpus generate`` on the project of ``config`` (run and cache beside it)."""
    root = config.parent
    run_dir = root / "run"
    args = ["generate", "--config", str(config), "--run", str(run_dir)]
    result = CliRunner().invoke(cli, [*args, "--cache-dir", str(root / "cache")])
    counters: dict[str, Any] = {}
    if result.exit_code == 0:
        counters = json.loads(result.stdout)["generate"]
    rows = list(read_run_generated(run_dir).values()) if run_dir.exists() else []
    return Generated(rows, counters, result.exit_code, result.output, run_dir, result.exception)


def generate_rows(
    root: Path,
    base_url: str | None,
    topics: dict[str, str],
    *,
    templates: list[str],
    **options: Any,
) -> Generated:
    """Write the project (see ``write_generate_project``) and run ``corpus generate`` once."""
    config = write_generate_project(root, base_url, topics, templates=templates, **options)
    return run_generate(config)
