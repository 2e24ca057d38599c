"""``export_run``: a run directory's documents -> a training dataset directory.

Reads ``documents/*.parquet`` one shard at a time through a Polars scan (filters pushed
down to the Parquet reader), so memory holds one input shard, never the corpus. Rows keep
their input order (assembly sorts by id), each input shard gives at most one output shard
per split, and the writer options are fixed: the same run and options give byte-identical
files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from builder.errors import InputError
from builder.export.card import card_text
from builder.export.formats import FORMATS
from builder.export.options import ExportOptions
from builder.export.split import assign_test, node_key_expr
from builder.export.writer import ExportWriter

EXPORT_FORMAT_VERSION = 1
DOCUMENTS_GLOB = "documents/*.parquet"

#: Columns carried into every export row when the run has them (provenance and scores).
PROVENANCE: tuple[str, ...] = (
    "id",
    "kind",
    "exercise_type",
    "discipline",
    "subject",
    "topic",
    "taxonomy_path",
    "session",
    "audience",
    "style",
    "difficulty",
    "template",
    "template_sha256",
    "model",
    "verified",
    "n_tokens",
    "reasoning_tokens",
    "edu_score",
    "relevance",
    "parent_id",
    "evolution_step",
    "evolution",
)
#: Columns the row builders read (besides provenance).
_INPUTS: tuple[str, ...] = ("text", "structured", "reasoning")
_KEY = "__split_node"
#: Rows built and written at a time (one Parquet row group each).
SLICE_ROWS = 4096


@dataclass
class ExportSummary:
    """What an export wrote: rows per split, skipped rows by reason, the files."""

    out: Path
    counts: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)
    test_nodes: list[str] = field(default_factory=list)
    nodes: int = 0  # split nodes in the selection (with --split-by)
    models: list[str] = field(default_factory=list)  # teacher models of the exported rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "counts": self.counts,
            "skipped": self.skipped,
            "files": self.files,
            "test_nodes": self.test_nodes,
            "nodes": self.nodes,
            "models": self.models,
        }


def _shards(run: Path) -> list[Path]:
    shards = sorted(run.glob(DOCUMENTS_GLOB))
    if not shards:
        raise InputError(
            f"{run}: no {DOCUMENTS_GLOB} shards",
            hint="point --run at a finished run directory (outputs/<run>/)",
        )
    return shards


def _arrow(t: pa.DataType) -> pa.DataType:
    """Plain ``string`` for every string flavour, so all shards share one schema."""
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    return t


def _row_filter(opts: ExportOptions, schema: pl.Schema, run: Path) -> pl.Expr:
    for name in ("id", "kind", "text"):
        if name not in schema:
            raise InputError(f"{run}: the documents have no '{name}' column")
    expr = pl.col("kind").is_in(list(opts.kinds))
    if opts.verified_only:
        if "verified" not in schema:
            raise InputError(f"{run}: the documents have no 'verified' column for --verified-only")
        expr &= pl.col("verified").fill_null(False)
    if opts.min_edu_score is not None:
        if "edu_score" not in schema:
            raise InputError(
                f"{run}: the documents have no 'edu_score' column for --min-edu-score",
                hint="score the run first (the quality stage), or drop --min-edu-score",
            )
        expr &= pl.col("edu_score").cast(pl.Float64) >= opts.min_edu_score
    return expr


def _output_schema(opts: ExportOptions, source: pa.Schema) -> pa.Schema:
    _, fmt_fields = FORMATS[opts.format]
    fields = list(fmt_fields)
    if opts.reasoning == "as-field":
        fields.append(pa.field("reasoning", pa.string()))
    names = set(source.names)
    fields += [pa.field(n, _arrow(source.field(n).type)) for n in PROVENANCE if n in names]
    return pa.schema(fields)


def _source_info(run: Path) -> tuple[dict[str, Any], str | None]:
    """(what the export came from, the run's licence) from its manifest when present."""
    info: dict[str, Any] = {"path": str(run), "run": run.name}
    manifest = run / "manifest.json"
    if not manifest.is_file():
        return info, None
    data = manifest.read_bytes()
    info["manifest_sha256"] = hashlib.sha256(data).hexdigest()
    try:
        m = json.loads(data)
    except ValueError:
        return info, None
    info["run"] = m.get("run") or run.name
    info["config_hash"] = m.get("config_hash")
    license_id = ((m.get("config") or {}).get("output") or {}).get("license")
    return info, license_id if isinstance(license_id, str) else None


def _no_match(run: Path, opts: ExportOptions) -> InputError:
    what = [f"kinds {', '.join(opts.kinds)}"]
    if opts.verified_only:
        what.append("verified only")
    if opts.min_edu_score is not None:
        what.append(f"edu_score >= {opts.min_edu_score:g}")
    return InputError(
        f"{run}: no document matches the export's selection ({', '.join(what)})",
        hint="widen --kinds or drop a filter",
    )


@dataclass
class _Rows:
    """Turns document rows into export rows per split, counting what it skips."""

    opts: ExportOptions
    names: frozenset[str]  # provenance columns the output carries
    test_nodes: frozenset[str]
    skipped: Counter[str] = field(default_factory=Counter)
    models: set[str] = field(default_factory=set)

    def convert(self, part: pl.DataFrame) -> dict[str, list[dict[str, Any]]]:
        build, _ = FORMATS[self.opts.format]
        rows: dict[str, list[dict[str, Any]]] = {s: [] for s in self.opts.splits}
        for row in part.iter_rows(named=True):
            built = build(row, self.opts)
            if isinstance(built, str):
                self.skipped[built] += 1
                continue
            if self.opts.reasoning == "as-field":
                built["reasoning"] = row.get("reasoning") or None
            built.update({n: row[n] for n in PROVENANCE if n in self.names})
            if row.get("model"):
                self.models.add(row["model"])
            rows["test" if row.get(_KEY) in self.test_nodes else "train"].append(built)
        return rows


def _finish(writer: ExportWriter, run: Path, opts: ExportOptions, summary: ExportSummary) -> None:
    """Final shard names, the card and export.json, then the swap into place."""
    summary.files = writer.finish_names()
    summary.counts = dict(writer.rows)
    source, license_id = _source_info(run)
    card = card_text(
        opts,
        files=summary.files,
        counts=summary.counts,
        skipped=summary.skipped,
        models=summary.models,
        nodes=(len(summary.test_nodes), summary.nodes),
        source=source,
        license_id=license_id,
    )
    writer.write_text("README.md", card)
    writer.write_marker(
        {
            "export_format": EXPORT_FORMAT_VERSION,
            "options": opts.describe(),
            "source": {k: v for k, v in source.items() if k != "path"},
            **{k: v for k, v in summary.to_dict().items() if k != "out"},
        }
    )
    writer.commit()


def export_run(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str], opts: ExportOptions
) -> ExportSummary:
    """Export the documents of ``run_dir`` to the dataset directory ``out`` (replaced
    whole if it holds an earlier export). Raises ``InputError`` for a run it cannot read."""
    run, target = Path(run_dir), Path(out)
    shards = _shards(run)
    lf_all = pl.scan_parquet(shards)
    schema = lf_all.collect_schema()
    keep = _row_filter(opts, schema, run)
    if opts.min_edu_score is not None and not (
        lf_all.select(pl.col("edu_score").is_not_null().any()).collect().item()
    ):
        raise InputError(
            f"{run}: no document has an 'edu_score' for --min-edu-score (the judge did not run)",
            hint="enable [judge] and rebuild (only the quality stage reruns), or drop "
            "--min-edu-score",
        )
    columns = [c for c in (*PROVENANCE, *_INPUTS) if c in schema]
    if "taxonomy_path" not in schema and opts.split_by:
        raise InputError(f"{run}: the documents have no 'taxonomy_path' column for --split-by")
    key_expr = node_key_expr(opts.split_depth()).alias(_KEY)
    if opts.split_by:
        columns.append(_KEY)

    test_nodes: frozenset[str] = frozenset()
    n_nodes = 0
    if opts.split_by:
        nodes = lf_all.filter(keep).select(key_expr).unique().collect(engine="streaming")
        n_nodes = nodes.height
        test_nodes = assign_test(nodes[_KEY].to_list(), opts.test_fraction, opts.seed)

    out_schema = _output_schema(opts, pq.read_schema(shards[0]))
    convert = _Rows(opts, frozenset(out_schema.names), test_nodes)
    writer = ExportWriter(target, jsonl=opts.jsonl)
    try:
        for shard in shards:
            lf = pl.scan_parquet(shard).filter(keep)
            if opts.split_by:
                lf = lf.with_columns(key_expr)
            for part in lf.select(columns).collect().iter_slices(SLICE_ROWS):
                for split, rows in convert.convert(part).items():
                    writer.write(split, pa.Table.from_pylist(rows, schema=out_schema))
            writer.end_shard()
        if not writer.parts:
            raise _no_match(run, opts)
        summary = ExportSummary(
            out=target,
            skipped=dict(sorted(convert.skipped.items())),
            test_nodes=sorted(test_nodes),
            nodes=n_nodes,
            models=sorted(convert.models),
        )
        _finish(writer, run, opts, summary)
    except BaseException:
        writer.abort()
        raise
    return summary
