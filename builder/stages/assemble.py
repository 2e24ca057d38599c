"""Stages ``assemble`` (shards, ``rejected.parquet``, ``manifest.json``, the card) and
``report`` (``report.html`` with coverage, quality and diversity).

Both read only files: the decontaminated documents, the rejections of every stage, the
walk's coverage and the markers' counters. ``corpus assemble|report --run DIR`` run them
alone with the same code. Assemble counts the tokens of every kept document as the
executor's tasks (Ray tasks with ``--executor ray``); the rest runs here.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl

from builder.assemble_inputs import scan_parquet_files
from builder.records import sha256_hex
from builder.stages.base import RunContext, Stage, upstream
from builder.stages.walk import load_coverage
from builder.util.memory import release_memory
from builder.util.partitions import list_parts

#: The stages whose seconds a build's stats report (ledger keys), in order.
STAGE_NAMES = (
    "syllabi", "walk", "generate", "filter", "quality", "dedup", "semdedup", "decontam",
    "assemble", "report",
)  # fmt: skip


def _scan(paths: list[Path]) -> pl.LazyFrame | None:
    """The rows of those of ``paths`` that exist, as one lazy scan (``scan_parquet_files``)."""
    paths = [p for p in paths if p.exists()]
    return scan_parquet_files(paths) if paths else None


def rejected_frame(ctx: RunContext) -> pl.LazyFrame | None:
    """Every dropped document with its stage and reason, as a lazy scan.

    Dedup's records are joined with the documents they drop (the cluster's ``kind``
    becomes ``dup_kind`` so ``kind`` stays the document's kind).
    """
    work = ctx.paths.work
    frames: list[pl.LazyFrame] = []
    for stage in ("filter", "quality"):
        dropped = _scan(list_parts(work / stage / "rejected"))
        if dropped is not None:
            frames.append(dropped)
    # MinHash and semantic duplicates (semdedup's removed = dedup's plus its own).
    removed_path = work / "semdedup" / "removed.parquet"
    kept = _scan(list_parts(work / "quality" / "kept"))
    if removed_path.exists() and kept is not None:
        removed = pl.read_parquet(removed_path)  # one small record per removed document
        if "stage" in removed.columns and removed.height:
            if "kind" in removed.columns:
                removed = removed.rename({"kind": "dup_kind"})
            removed = removed.with_columns(pl.col("id").cast(pl.String))
            # Only the removed documents' rows are read (a streaming filter), never all texts.
            fields = (
                kept.filter(pl.col("id").is_in(removed["id"].implode()))
                .drop(["stage", "reason", "detail", "dup_cluster"], strict=False)
                .collect(engine="streaming")
            )
            joined = removed.join(fields, on="id", how="left", maintain_order="left")
            if "cluster_id" in joined.columns:
                joined = joined.with_columns(
                    pl.col("cluster_id").cast(pl.String).alias("dup_cluster")
                )
            frames.append(joined.lazy())
    contaminated = work / "decontam" / "rejected.parquet"
    if contaminated.exists():
        scan = pl.scan_parquet(contaminated)
        if "stage" in scan.collect_schema().names():
            frames.append(scan)
    if not frames:
        return None
    return pl.concat(frames, how="diagonal_relaxed")


def build_stats(ctx: RunContext) -> dict[str, Any]:
    """The ``stats`` the manifest, card and report show (see ``builder.card``): totals over
    every build into this run (the ledger) plus this call, and each stage's counters."""
    ledger = ctx.ledger
    meter = ctx.llm_opened
    prior = ledger.stage_seconds if ledger is not None else {}
    seconds = {
        st: prior.get(st, 0.0) + ctx.seconds.get(st, 0.0)
        for st in STAGE_NAMES
        if st in prior or st in ctx.seconds
    }
    markers = ctx.markers

    def counters(stage: str) -> dict[str, Any]:
        if stage in ctx.counters:
            return dict(ctx.counters[stage])
        return dict(markers.read(stage).get("counters") or {})

    gen = counters("generate")
    filt = counters("filter")
    stages: dict[str, dict[str, Any]] = {st: {"seconds": round(v, 3)} for st, v in seconds.items()}
    stages.setdefault("generate", {})["requests"] = gen.get("planned", 0)
    walk = counters("walk")
    return {
        "cost_usd": round((ledger.cost_usd if ledger else 0.0) + (meter.cost if meter else 0.0), 6),
        "seconds": round(sum(seconds.values()), 3),
        "requests_sent": (ledger.requests_sent if ledger else 0) + (meter.sent if meter else 0),
        "requests_cached": (ledger.requests_cached if ledger else 0)
        + (meter.cached if meter else 0),
        "builds": (ledger.builds if ledger else 0) + 1,
        "units": walk.get("units", 0),
        "syllabi_used": walk.get("syllabi_used", 0),
        "stages": stages,
        "generate": gen,
        "filter": {
            k: filt[k] for k in ("rows_in", "kept", "rejected", "verified", "reasons") if k in filt
        },
        "dedup": counters("dedup").get("stats") or {},
        "decontam": counters("decontam").get("stats") or {},
        "quality": counters("quality").get("stats") or {},
        "semdedup": counters("semdedup").get("stats") or {},
    }


class AssembleStage(Stage):
    """Shards of bounded size sorted by id, ``rejected.parquet``, manifest and card."""

    name = "assemble"

    def inputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.paths.stage_dir("decontam") / "clean.parquet"]

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.paths.manifest, ctx.paths.card]

    def fingerprint(self, ctx: RunContext) -> str | None:
        from builder.assemble import verify_run
        from builder.review.flags import flags_fingerprint

        try:
            problems = verify_run(ctx.paths.root) if ctx.paths.manifest.exists() else []
        except Exception as exc:  # noqa: BLE001 - a damaged run directory is rebuilt
            problems = [str(exc)]
        return sha256_hex(
            {
                "upstream": upstream(ctx, "walk", "filter", "quality", "semdedup", "decontam"),
                "config": ctx.config.config_hash(),
                "flags": flags_fingerprint(ctx.paths.root),  # curator flags (corpus review)
                "damaged": problems,  # a damaged corpus never matches: it is rebuilt
            }
        )

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from builder.assemble import assemble
        from builder.card import write_card
        from builder.quality.hooks import quality_summary
        from builder.run.executor import TaskLog

        config = ctx.config
        ctx.log("[assemble] writing shards, manifest, card and report")
        stats = build_stats(ctx)

        def summary() -> Any:
            quality = quality_summary(ctx, self.inputs(ctx)[0])
            # The summary's per-node sums are freed now: hand their pages back before the
            # shards are written, so the stage's peak is the larger of the two, not their sum.
            release_memory()
            return quality

        # Token counting as the executor's tasks (Ray tasks, or the local executor's
        # processes), one slice of the id-sorted documents each; the diversity summary is
        # computed here while they run (it has single-threaded phases that leave cores idle).
        executor = ctx.runner()
        tasks = TaskLog()
        result = assemble(
            self.inputs(ctx)[0],
            rejected_frame(ctx),
            ctx.paths.root,
            config=config,
            extra_manifest={"stats": stats},
            mapper=functools.partial(executor.map_tasks, where=tasks.add),
            alongside=summary,
            counted=True,  # the filter stage counted every document it kept
        )
        quality = result.alongside
        write_card(
            ctx.paths.root,
            config=config,
            manifest=result.manifest,
            stats=stats,
            taxonomy=ctx.taxonomy(),
            quality=quality,
        )
        ctx.log(
            f"[assemble] {result.documents} document(s), {result.tokens} tokens in "
            f"{len(result.shards)} shard(s); {result.rejected} rejected"
        )
        # Who counted the tokens (processes, Ray nodes): the marker's, not the manifest's.
        return {
            "documents": result.documents,
            "tokens": result.tokens,
            "token_tasks": {**tasks.to_dict(), "seconds": round(result.token_seconds, 3)},
            "tokens_counted_by": "filter" if result.counted else "assemble",
        }


class ReportStage(Stage):
    """``report.html``: coverage per taxonomy node, quality, diversity (openers, clusters,
    contamination) from the run's files; the opener tables are computed by a scan that
    reads only each text's first characters."""

    name = "report"

    def inputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.paths.manifest]

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.paths.report]

    def fingerprint(self, ctx: RunContext) -> str | None:
        return sha256_hex({"upstream": upstream(ctx, "assemble", "dedup", "semdedup", "decontam")})

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from builder.assemble import read_manifest
        from builder.diversity import diversity_report

        work = ctx.paths.work
        manifest = read_manifest(ctx.paths.root)
        before_dedup = _scan(list_parts(work / "quality" / "kept"))

        def diversity() -> Any:
            clusters = work / "dedup" / "clusters.parquet"
            hits = work / "decontam" / "hits.parquet"
            self.out_dir(ctx).mkdir(parents=True, exist_ok=True)
            found = diversity_report(
                before_dedup,
                pl.read_parquet(clusters) if clusters.exists() else None,
                pl.read_parquet(hits) if hits.exists() else None,
                opener_words=ctx.config.dedup.opener_words,
                batch_rows=ctx.config.run.partition_rows,
                spill_dir=self.out_dir(ctx),
            )
            found.write(self.out_dir(ctx))
            return found

        # The diversity tables (over the documents before dedup) are computed on a thread
        # while write_report summarises the corpus and draws its plots (Polars' scans and
        # the PNG encoding release the GIL).
        pool = ThreadPoolExecutor(max_workers=1)
        pending = None
        if before_dedup is not None and before_dedup.select(pl.len()).collect().item():
            pending = pool.submit(diversity)
        pool.shutdown(wait=False)
        try:
            self._write(ctx, manifest, pending.result if pending is not None else None)
        finally:
            if pending is not None:
                pending.exception()  # never leave it running
        return {}

    def _write(self, ctx: RunContext, manifest: dict[str, Any], diversity: Any) -> None:
        from builder.quality.summary import QualitySummary
        from builder.report import write_report

        work = ctx.paths.work
        write_report(
            ctx.paths.root,
            diversity=diversity,
            coverage=load_coverage(ctx),
            taxonomy=ctx.taxonomy(),
            stats=manifest.get("stats"),
            manifest=manifest,
            batch_rows=ctx.config.run.partition_rows,
            quality=(
                QualitySummary.read(work / "diversity")
                if (work / "diversity" / "quality_summary.json").exists()
                else None
            ),
        )
