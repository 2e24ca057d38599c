"""Stages ``syllabi`` and ``walk``: make missing syllabi, then stream the walker's units into
unit partitions ``work/walk/part-*.parquet`` (plus ``coverage.json`` for the report)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from builder.records import Unit, canonical_json
from builder.run.inputs import missing_syllabi, node_statuses, open_walk
from builder.stages.base import RunContext, Stage
from builder.util.files import atomic_write_text
from builder.util.partitions import list_parts, part_name, write_table

UNIT_SCHEMA = pa.schema(
    [
        pa.field(name, pa.list_(pa.string()))
        if name == "concepts"
        else pa.field(name, pa.int64() if name in ("session_index", "seed") else pa.string())
        for name in Unit.__dataclass_fields__
    ]
)
DIGESTS = "_digests.json"
COVERAGE = "coverage.json"


class SyllabiStage(Stage):
    """Generate the missing syllabi of the selected subjects (GLAN), as proposed files.

    Writes under the taxonomy, not the run directory, and only what is missing, so it runs
    every build (nothing to do is the common case).
    """

    name = "syllabi"
    uses_llm = True

    def outputs(self, ctx: RunContext) -> list[Path]:
        return []

    def fingerprint(self, ctx: RunContext) -> str | None:
        return None

    def run(self, ctx: RunContext) -> dict[str, Any]:
        config = ctx.config
        tax = ctx.taxonomy()
        missing = missing_syllabi(tax, config)
        if not missing:
            return {"missing": 0}
        from builder.syllabus import generate_syllabi

        llm = ctx.llm()
        ctx.log(
            f"[syllabi] generating {len(missing)} missing syllabus file(s): {', '.join(missing)}"
        )
        sent_before = llm.sent
        report = generate_syllabi(
            tax,
            llm,
            missing,
            config.syllabus,
            only_missing=True,
            statuses=node_statuses(config),
            strict=False,
            max_cost=llm.remaining(),
        )
        for outcome in report.written:
            ctx.log(f"[syllabi] {outcome}")
        for outcome in report.failed:
            ctx.log(
                f"[syllabi] {outcome.subject}: {outcome.detail} (its topics are walked instead)"
            )
        if report.written or llm.sent > sent_before:
            ctx.did_work = True
        if report.written:
            ctx.reload_taxonomy()  # a fresh object: nothing cached from before the files
        return {
            "missing": len(missing),
            "written": len(report.written),
            "failed": [o.subject for o in report.failed],
        }

    def plan(self, ctx: RunContext) -> dict[str, Any]:
        return {"stage": self.name, "missing": missing_syllabi(ctx.taxonomy(), ctx.config)}


def _chunks(units: Any, size: int) -> Any:
    chunk: list[Unit] = []
    for unit in units:
        chunk.append(unit)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class WalkStage(Stage):
    """Stream the lazy walker into unit partitions of ``[run] units_per_partition`` units.

    A partition is rewritten only when its units changed, so an unchanged walk leaves every
    file (and so every later stage's fingerprint) as it was.
    """

    name = "walk"

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [self.out_dir(ctx)]

    def fingerprint(self, ctx: RunContext) -> str | None:
        return None

    def run(self, ctx: RunContext) -> dict[str, Any]:
        out = self.out_dir(ctx)
        out.mkdir(parents=True, exist_ok=True)
        try:
            old = json.loads((out / DIGESTS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        walk = open_walk(ctx.taxonomy(), ctx.config)
        digests: dict[str, str] = {}
        total = 0
        rewritten = 0
        for i, chunk in enumerate(_chunks(walk, ctx.config.run.units_per_partition)):
            h = hashlib.sha256()
            for unit in chunk:
                h.update(canonical_json(unit.to_dict()).encode("utf-8"))
            name = part_name(i)
            digests[name] = h.hexdigest()
            total += len(chunk)
            if old.get(name) != digests[name] or not (out / name).exists():
                rows = [u.to_dict() for u in chunk]
                write_table(pa.Table.from_pylist(rows, schema=UNIT_SCHEMA), out / name)
                rewritten += 1
        for p in list_parts(out):
            if p.name not in digests:
                p.unlink()
        atomic_write_text(out / DIGESTS, json.dumps(digests, indent=0, sort_keys=True))
        atomic_write_text(
            out / COVERAGE, json.dumps(coverage_to_json(walk.coverage()), sort_keys=True)
        )
        used = ", ".join(sorted(walk.syllabi)) or "none"
        ctx.log(f"[walk] {total} unit(s) over {walk.slots} slot(s); syllabi used: {used}")
        return {
            "units": total,
            "parts": len(digests),
            "rewritten": rewritten,
            "syllabi_used": len(walk.syllabi),
        }


def unit_parts(ctx: RunContext) -> list[Path]:
    """The walk's unit partitions, in walk order."""
    return list_parts(ctx.paths.stage_dir(WalkStage.name))


def read_units(path: Path) -> list[Unit]:
    """The units of one unit partition."""
    import pyarrow.parquet as pq

    return [Unit.from_dict(r) for r in pq.read_table(path).to_pylist()]


def coverage_to_json(cov: Any) -> dict[str, Any]:
    """A ``builder.walk.Coverage`` as JSON (sessions keyed ``subject#index``)."""
    return {
        "total": cov.total,
        "units": dict(cov.units),
        "subtree": dict(cov.subtree),
        "sessions": [[s, i, n] for (s, i), n in sorted(cov.sessions.items())],
        "per_level": dict(cov.per_level),
        "expected": list(cov.expected),
    }


def load_coverage(ctx: RunContext) -> Any:
    """The walk's ``Coverage`` as the walk stage saved it (None if it has not run)."""
    from collections import Counter

    from builder.walk import Coverage

    try:
        data = json.loads((ctx.paths.stage_dir("walk") / COVERAGE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return Coverage(
        units=Counter(data["units"]),
        subtree=Counter(data["subtree"]),
        sessions=Counter({(s, int(i)): n for s, i, n in data["sessions"]}),
        per_level=Counter(data["per_level"]),
        expected=list(data["expected"]),
        total=int(data["total"]),
    )
