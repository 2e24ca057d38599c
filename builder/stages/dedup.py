"""Stages ``dedup`` and ``decontam``: file-to-file algorithms over the run's partitions.

``dedup`` reads ``work/quality/kept/`` and writes ``work/dedup/kept.parquet`` (survivors,
``dup_cluster`` set), ``clusters.parquet`` and ``removed.parquet`` (one rejection record per
removed document). ``decontam`` reads ``work/semdedup/kept.parquet`` (the MinHash and
semantic survivors) and writes ``work/decontam/clean.parquet``, ``hits.parquet`` and
``rejected.parquet``. When decontam has benchmark files, dedup's signature tasks also scan
every row against their n-gram index with the words they tokenize anyway, and write the
hits by id to ``work/dedup/ngram_hits.parquet`` (its metadata names the index and the dedup
run); decontam then reads them for its input's ids instead of reading and tokenizing every
text again, and scans itself when they are missing or were made for another index or
another dedup run. Both stream their input (signatures and n-gram keys are arrays;
texts are read batch by batch), so memory does not grow with the texts. A run killed
mid-stage leaves no marker: the stage reruns from its inputs and gives the same result;
dedup keeps its intermediates in ``work/dedup/dedup-partial/`` meanwhile, so its rerun
reuses the signature pieces already finished. On Ray (``ctx.executor.task_map``) dedup's
signature tasks and its band-bucket tasks (the shuffle) are Ray tasks; decontam's scan of
each slice of its input is one of the executor's tasks (``map_tasks``: Ray tasks, or the
local executor's processes), and its marker's ``tasks`` say which processes (and Ray nodes)
ran them.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from builder.records import sha256_hex
from builder.run.inputs import benchmark_files
from builder.stages.base import RunContext, Stage, upstream
from builder.util.files import atomic_copy, file_sha256
from builder.util.partitions import list_parts, write_table


def copy_parts(sources: list[Path], dest: Path, batch_rows: int) -> int:
    """Stream Parquet files into one file at ``dest`` (atomically); return the rows."""
    from builder.io_tables import ParquetSink

    schema = pq.read_schema(sources[0])
    rows = 0
    with ParquetSink(dest, schema) as sink:
        for src in sources:
            for batch in pq.ParquetFile(src).iter_batches(batch_size=batch_rows):
                sink.write(pa.Table.from_batches([batch], schema=schema))
                rows += batch.num_rows
    return rows


def _clean_scratch(out: Path) -> None:
    """Remove temp folders a killed run left (the algorithms' ``.dedup-work-*`` etc.)."""
    if out.is_dir():
        for p in out.iterdir():
            if p.name.startswith(".") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


#: Dedup's scan for decontam (module docstring), and the metadata keys that say for what.
SCAN_HITS = "ngram_hits.parquet"
_SCAN_KEYS = (b"decontam_index", b"dedup_fingerprint")


def _decontam_settings(ctx: RunContext) -> Any:
    """[decontam] as the stage scans with it: slices of at most a partition's rows."""
    config = ctx.config
    rows = min(config.decontam.partition_size, config.run.partition_rows)
    return config.decontam.model_copy(update={"partition_size": rows})


def _scan_spec(ctx: RunContext, bench: list[Path]) -> Any:
    """The ``IndexSpec`` decontam's index is built from (benchmark files expanded)."""
    from builder.decontam_index import benchmark_files as expand
    from builder.decontam_index import index_spec

    return index_spec([str(p) for p in expand(bench)], _decontam_settings(ctx))


def _write_scan_hits(path: Path, hits: pl.DataFrame, token: str, fingerprint: str) -> None:
    table = hits.to_arrow()
    meta = dict(zip(_SCAN_KEYS, (token.encode(), fingerprint.encode()), strict=True))
    write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **meta}), path)


def _read_scan_hits(path: Path, token: str, fingerprint: str | None) -> pl.DataFrame | None:
    """Dedup's hits when they were made with index ``token`` by the dedup run whose marker
    holds ``fingerprint``; else None (decontam scans itself)."""
    if fingerprint is None or not path.is_file():
        return None
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    if [meta.get(k) for k in _SCAN_KEYS] != [token.encode(), fingerprint.encode()]:
        return None
    return pl.read_parquet(path)


def _stats(result: Any) -> dict[str, Any]:
    stats = result.stats.to_dict()
    stats.pop("settings", None)
    return stats


class DedupStage(Stage):
    """Exact and MinHash-LSH near-duplicate removal (``builder.dedup``)."""

    name = "dedup"

    def inputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.paths.stage_dir("quality") / "kept"]

    def outputs(self, ctx: RunContext) -> list[Path]:
        out = self.out_dir(ctx)
        return [out / "kept.parquet", out / "clusters.parquet", out / "removed.parquet"]

    def fingerprint(self, ctx: RunContext) -> str | None:
        return sha256_hex(
            {
                "quality": upstream(ctx, "quality"),
                "dedup": ctx.config.dedup.model_dump(mode="json"),
            }
        )

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from builder.dedup import dedup_files

        config = ctx.config
        out = self.out_dir(ctx)
        _clean_scratch(out)
        (out / SCAN_HITS).unlink(missing_ok=True)  # only ever this run's
        kept, clusters, removed = self.outputs(ctx)
        parts = list_parts(self.inputs(ctx)[0])
        n = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
        stats: dict[str, Any] = {"rows_in": n, "rows_out": n}
        if config.dedup.enabled and n:
            # The executor's task map (Ray) computes the signatures; None: a local pool.
            mapper = getattr(ctx.executor, "task_map", None)
            bench = benchmark_files(config)
            scan = _scan_spec(ctx, bench) if bench else None
            result = dedup_files(self.inputs(ctx)[0], out, config.dedup, mapper=mapper, scan=scan)
            if scan is not None and result.scan_hits is not None:
                fingerprint = self.fingerprint(ctx)
                assert fingerprint is not None
                _write_scan_hits(out / SCAN_HITS, result.scan_hits, scan.token, fingerprint)
            write_table(result.removed.to_arrow(), removed)
            stats = _stats(result)
            # How much a resumed run reused is this call's, not the stage's result.
            reused = stats.pop("pieces_reused", 0)
            if reused:
                ctx.log(f"[dedup] reused {reused} of {stats['pieces']} finished signature pieces")
            n_removed = result.removed.height
        else:
            copy_parts(parts, kept, config.run.partition_rows)
            from builder.dedup import CLUSTER_COLUMNS

            types = {"removed": pl.Boolean, "cluster_size": pl.Int64, "jaccard": pl.Float64}
            types["matched_jaccard"] = pl.Float64
            empty = pl.DataFrame(schema={c: types.get(c, pl.String) for c in CLUSTER_COLUMNS})
            write_table(empty.to_arrow(), clusters)
            write_table(pa.table({"id": pa.array([], pa.string())}), removed)
            n_removed = 0
        ctx.log(f"[dedup] kept {n - n_removed}, removed {n_removed} duplicate(s)")
        return {"stats": stats}


class DecontamStage(Stage):
    """N-gram decontamination against the [decontam] benchmark files (``builder.decontam``)."""

    name = "decontam"

    def inputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.paths.stage_dir("semdedup") / "kept.parquet"]

    def outputs(self, ctx: RunContext) -> list[Path]:
        out = self.out_dir(ctx)
        return [out / "clean.parquet", out / "hits.parquet", out / "rejected.parquet"]

    def fingerprint(self, ctx: RunContext) -> str | None:
        bench = benchmark_files(ctx.config)
        return sha256_hex(
            {
                "dedup": upstream(ctx, "semdedup"),
                "decontam": ctx.config.decontam.model_dump(mode="json"),
                "benchmarks": [[str(p), file_sha256(p)] for p in bench],
            }
        )

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from builder.decontam import HIT_COLUMNS, decontaminate_files
        from builder.run.executor import TaskLog

        config = ctx.config
        out = self.out_dir(ctx)
        _clean_scratch(out)
        clean, hits, rejected = self.outputs(ctx)
        source = self.inputs(ctx)[0]
        n = pq.ParquetFile(source).metadata.num_rows
        bench = benchmark_files(config)
        stats: dict[str, Any] = {"rows_in": n, "rows_out": n}
        tasks = None
        if bench and n:
            settings = _decontam_settings(ctx)
            scanned = _read_scan_hits(
                ctx.paths.stage_dir("dedup") / SCAN_HITS,
                _scan_spec(ctx, bench).token,
                ctx.markers.fingerprint("dedup"),
            )
            if scanned is not None:  # dedup's tasks scanned every row with this index
                result = decontaminate_files(source, bench, out, settings, hits=scanned)
            else:
                # The n-gram scan as the executor's tasks (Ray tasks, or the local
                # executor's processes), one slice of at most a partition's rows each.
                tasks = TaskLog()
                mapper = functools.partial(ctx.runner().map_tasks, where=tasks.add)
                result = decontaminate_files(source, bench, out, settings, mapper=mapper)
            stats = _stats(result)
            stats["scanned_by"] = "decontam" if scanned is None else "dedup"
            n_bad = result.contaminated.height
        else:
            atomic_copy(source, clean)  # nothing to check against: the input as it is
            write_table(pa.table({c: pa.array([], pa.string()) for c in HIT_COLUMNS}), hits)
            write_table(pa.table({"id": pa.array([], pa.string())}), rejected)
            n_bad = 0
            if not bench:
                stats["note"] = "no benchmark files configured"
        ctx.log(f"[decontam] clean {n - n_bad}, contaminated {n_bad}")
        if tasks is None:
            return {"stats": stats}
        return {"stats": stats, "tasks": tasks.to_dict()}
