"""Stages ``quality`` (after filter) and ``semdedup`` (after MinHash dedup): the quality gates.

``quality`` maps over the filter's kept partitions: Python code inside prose is checked
(``code_ok``), every document gets its ``relevance`` to its unit (offline embeddings, or an
``[embeddings]`` endpoint), and the optional educational-value judge grades it
(``edu_score``). It writes ``work/quality/kept/``, ``work/quality/rejected/`` (reasons
``code_error``, ``off_topic``, ``low_value``) and ``work/quality/embeddings/`` partitions.

``semdedup`` finds semantic near-duplicates among MinHash's survivors from those embeddings
(SemDeDup: k-means, then comparisons within clusters) and removes them when
``[dedup] semantic = true``; it writes ``work/semdedup/{kept,clusters,removed,nodes,
semantic}.parquet``. The algorithms live in ``builder.quality`` (no I/O policy there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from builder.records import DOCUMENT_SCHEMA, REJECTED_SCHEMA, decode_row, sha256_hex
from builder.stages.base import PartitionStage, RunContext, Stage, upstream
from builder.stages.filter import kept_parts
from builder.stages.walk import read_units, unit_parts
from builder.util.partitions import list_parts

EMBEDDINGS_SCHEMA = pa.schema(
    [pa.field("id", pa.string()), pa.field("embedding", pa.list_(pa.float32()))]
)


def _frame(table: pa.Table) -> pl.DataFrame:
    return pl.from_arrow(table)  # type: ignore[return-value]


def _rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return [decode_row(r) for r in frame.to_dicts()]


class QualityStage(PartitionStage):
    """Code in prose, relevance and the judge over each kept partition (module docstring)."""

    name = "quality"
    uses_llm = True  # the judge (when enabled) and the embeddings endpoint's budget

    def __init__(self) -> None:
        self._embedder: Any = None
        self._judge_engine: Any = None
        self._queries: dict[str, str] | None = None
        self._units: dict[str, Any] | None = None
        self._stats: dict[str, Any] = {}

    def inputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.paths.stage_dir("filter") / "kept"]

    def input_parts(self, ctx: RunContext) -> list[Path]:
        return kept_parts(ctx)

    def sinks(self) -> dict[str, pa.Schema]:
        return {
            "kept": DOCUMENT_SCHEMA,
            "rejected": REJECTED_SCHEMA,
            "embeddings": EMBEDDINGS_SCHEMA,
        }

    def _template(self, ctx: RunContext) -> Any:
        config = ctx.config
        if not config.judge.enabled:
            return None
        from builder.quality.judge import load_judge_template

        return load_judge_template(config.path(config.judge.template))

    def fingerprint(self, ctx: RunContext) -> str | None:
        config = ctx.config
        f = config.filters
        template = self._template(ctx)
        judge_model = None
        if config.judge.enabled:
            judge_model = config.judge.model if config.judge.base_url else ctx.llm().model_name
        return sha256_hex(
            {
                "upstream": upstream(ctx, "walk", "filter"),
                "gates": {
                    k: getattr(f, k)
                    for k in ("min_relevance", "min_edu_score", "check_code", "drop_code_errors")
                },
                "embeddings": config.embeddings.model_dump(mode="json"),
                "judge": config.judge.model_dump(mode="json") if config.judge.enabled else None,
                "judge_template": template.sha256 if template else None,
                "judge_model": judge_model,
                "verify": config.verify.model_dump(mode="json", exclude={"sandbox_pool"}),
                "partition_rows": config.run.partition_rows,
            }
        )

    def _load_units(self, ctx: RunContext) -> None:
        from builder.quality.relevance import unit_query

        self._queries, self._units = {}, {}
        for part in unit_parts(ctx):
            for unit in read_units(part):
                self._queries[unit.unit_id] = unit_query(unit)
                if ctx.config.judge.enabled:
                    self._units[unit.unit_id] = unit

    @staticmethod
    def _fresh_stats() -> dict[str, Any]:
        return {"code": {"checked": 0, "ok": 0, "failed": 0}, "off_topic": 0, "low_value": 0}

    def run(self, ctx: RunContext) -> dict[str, Any]:
        self._stats = self._fresh_stats()
        self._embedder = self._judge_engine = None
        self._queries = self._units = None
        try:
            return super().run(ctx)
        finally:
            if self._judge_engine is not None:
                self._judge_engine.close()
                self._judge_engine = None

    def task_counters(self) -> dict[str, Any]:
        # Tallied by run_partition wherever the task ran (a Ray worker holds a copy).
        embedder = self._embedder
        cost = getattr(getattr(embedder, "stats", None), "cost", 0.0) if embedder else 0.0
        out = {"stats": {**self._stats, "embeddings_cost": cost}}
        if embedder is not None and getattr(embedder, "stats", None) is not None:
            embedder.stats.cost = 0.0
        self._stats = self._fresh_stats()
        return out

    def run_partition(self, ctx: RunContext, table: pa.Table) -> dict[str, list[dict[str, Any]]]:
        config = ctx.config
        f = config.filters
        docs = _frame(table)
        rejected: list[pl.DataFrame] = []
        out: dict[str, list[dict[str, Any]]] = {"kept": [], "rejected": [], "embeddings": []}
        if not docs.height:
            return out
        # Code inside prose: Python fences compiled, `>>>` examples run in the sandbox.
        if f.check_code:
            from builder.quality.codecheck import check_documents

            checks = check_documents(
                docs["text"].fill_null("").to_list(),
                docs["kind"].to_list(),
                config.verify,
                workers=config.verify.workers or 2,
            )
            docs = docs.with_columns(
                pl.Series("code_ok", [c.ok for c in checks], dtype=pl.Boolean),
                pl.Series("code_detail", [c.detail or None for c in checks], dtype=pl.String),
            )
            code = self._stats["code"]
            code["checked"] += sum(c.ok is not None for c in checks)
            code["ok"] += sum(c.ok is True for c in checks)
            code["failed"] += sum(c.ok is False for c in checks)
            if f.drop_code_errors:
                bad = docs.filter(pl.col("code_ok").eq(False))
                rejected.append(
                    bad.with_columns(
                        pl.lit("quality").alias("stage"),
                        pl.lit("code_error").alias("reason"),
                        pl.col("code_detail").alias("detail"),
                    )
                )
                docs = docs.filter(pl.col("code_ok").ne(False) | pl.col("code_ok").is_null())
        # Relevance of each document to its unit.
        if config.embeddings.enabled and docs.height:
            from builder.quality.relevance import add_relevance, split_off_topic

            if self._embedder is None:
                from builder.llm import resolve_cache_dir
                from builder.quality.embed import open_embedder

                remaining = getattr(ctx.llm_opened, "remaining", None)
                self._embedder = open_embedder(
                    config.embeddings,
                    config.llm,
                    resolve_cache_dir(None, config.llm, root=config.root),
                    max_cost=remaining() if remaining is not None else None,
                )
                self._stats["embedder"] = self._embedder.name
            if self._queries is None:
                self._load_units(ctx)
            vectors = self._embedder.embed(docs["text"].fill_null("").to_list())
            out["embeddings"] = [
                {"id": str(i), "embedding": v}
                for i, v in zip(
                    docs["id"].to_list(), vectors.astype(np.float32).tolist(), strict=True
                )
            ]
            docs = add_relevance(docs, self._queries or {}, self._embedder)
            docs, off = split_off_topic(docs, f.min_relevance)
            self._stats["off_topic"] += off.height
            rejected.append(off)
        # The educational-value judge.
        if config.judge.enabled and docs.height:
            from builder.quality.judge import judge_frame, split_low_value

            if self._units is None:
                self._load_units(ctx)
            engine = self._judge(ctx)
            meter = ctx.llm()
            remaining = getattr(meter, "remaining", None)
            docs, jstats = judge_frame(
                docs,
                engine,
                self._template(ctx),
                config.judge,
                units=self._units,
                max_cost=remaining() if remaining is not None else None,
            )
            if engine is not meter and hasattr(meter, "cost"):
                meter.cost += jstats.cost  # the build's meter covers the judge's endpoint
            docs, low = split_low_value(docs, f.min_edu_score)
            self._stats["low_value"] += low.height
            judge = self._stats.setdefault("judge", {})
            for key, value in jstats.to_dict().items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    judge[key] = judge.get(key, 0) + value
            judge["low_value"] = judge.get("low_value", 0) + low.height
            if jstats.failed:
                ctx.log(f"[quality] judge failed on {jstats.failed} document(s): {jstats.errors}")
            rejected.append(low)
        out["kept"] = _rows(docs)
        out["rejected"] = [r for frame in rejected if frame.height for r in _rows(frame)]
        return out

    def _judge(self, ctx: RunContext) -> Any:
        """The judge's own engine when ``[judge]`` names an endpoint, else the build's."""
        from builder.quality.hooks import judge_llm_settings

        settings = judge_llm_settings(ctx.config)
        if settings is None:
            return ctx.llm()
        if self._judge_engine is None:
            from builder.llm import open_engine, resolve_cache_dir

            self._judge_engine = open_engine(
                settings,
                cache_dir=resolve_cache_dir(None, ctx.config.llm, root=ctx.config.root),
                progress=False,
            )
        return self._judge_engine

    def finish(self, ctx: RunContext, counters: dict[str, Any]) -> None:
        # Summed over the partitions' task_counters (wherever each partition ran).
        stats = dict(counters.get("stats") or self._fresh_stats())
        cost = float(stats.pop("embeddings_cost", 0.0) or 0.0)
        meter = ctx.llm_opened
        if cost and meter is not None and counters.get("partitions_run"):
            meter.cost += cost  # the build's meter covers the embeddings endpoint too
        if ctx.config.embeddings.enabled:
            stats["relevance"] = {
                "embedder": stats.get("embedder"),
                "min_relevance": ctx.config.filters.min_relevance,
                "off_topic": stats["off_topic"],
            }
        counters["stats"] = stats
        ctx.log(f"[quality] kept {counters['rows_kept']} of {counters['rows_in']}")


def load_embeddings(ctx: RunContext, ids: list[str]) -> np.ndarray | None:
    """The quality stage's embeddings of ``ids`` in that order (None when any is missing)."""
    parts = list_parts(ctx.paths.stage_dir("quality") / "embeddings")
    if not parts or not ids:
        return None
    table = pl.concat([pl.read_parquet(p) for p in parts])
    if not table.height:
        return None
    found = pl.DataFrame({"id": ids}).join(table, on="id", how="left", maintain_order="left")
    if found["embedding"].null_count():
        return None
    column = found["embedding"]
    if column.list.len().n_unique() == 1:  # one flat float32 buffer, no Python floats
        flat = column.explode().to_numpy().astype(np.float32, copy=False)
        return flat.reshape(found.height, -1)
    return np.asarray(column.to_list(), dtype=np.float32)


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    frames = [f for f in frames if f.height]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


class SemDedupStage(Stage):
    """Semantic near-duplicates among MinHash's survivors (module docstring)."""

    name = "semdedup"
    FILES = ("kept", "clusters", "removed", "nodes", "semantic")

    def inputs(self, ctx: RunContext) -> list[Path]:
        d = ctx.paths.stage_dir("dedup")
        return [d / "kept.parquet", d / "clusters.parquet", d / "removed.parquet"]

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [self.out_dir(ctx) / f"{n}.parquet" for n in self.FILES]

    def fingerprint(self, ctx: RunContext) -> str | None:
        d = ctx.config.dedup
        return sha256_hex(
            {
                "upstream": upstream(ctx, "dedup", "quality"),
                "settings": [d.semantic, d.semantic_threshold, d.semantic_cluster_size, d.enabled],
            }
        )

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from builder.diversity import node_rates
        from builder.quality.semdedup import removal_records, semantic_clusters

        d = ctx.config.dedup
        kept_in, clusters_in, removed_in = self.inputs(ctx)
        paths = dict(zip(self.FILES, self.outputs(ctx), strict=True))
        docs = pl.read_parquet(kept_in)
        minhash = pl.read_parquet(clusters_in)
        removed_before = pl.read_parquet(removed_in)
        ids = docs["id"].cast(pl.String).to_list() if docs.height else []
        vectors = load_embeddings(ctx, ids) if d.enabled else None
        stats: dict[str, Any] = {"rows_in": docs.height, "applied": d.semantic}
        semantic = semantic_clusters([], np.zeros((0, 1))).clusters
        if vectors is not None and len(ids) > 1:
            result = semantic_clusters(
                ids,
                vectors,
                threshold=d.semantic_threshold,
                cluster_size=d.semantic_cluster_size,
                lengths=docs["text"].fill_null("").str.len_chars().to_numpy(),
                verified=docs["verified"].to_list() if "verified" in docs.columns else None,
            )
            semantic = result.clusters
            stats.update(
                groups=result.groups, duplicates=result.removed, kmeans=result.kmeans_clusters
            )
        dup_ids = semantic.filter(pl.col("removed"))["id"].implode()
        flagged = docs.select(pl.col("id").cast(pl.String), pl.col("taxonomy_path")).with_columns(
            pl.col("id").is_in(dup_ids).alias("semantic_dup")
        )
        nodes = node_rates(flagged, ["semantic_dup"]) if docs.height else pl.DataFrame()
        kept, clusters, removed = docs, minhash, removed_before
        if d.semantic and semantic.filter(pl.col("removed")).height:
            records = removal_records(semantic, d.semantic_threshold)
            gone = records["id"].to_list()
            kept = docs.filter(~pl.col("id").cast(pl.String).is_in(gone))
            rep_cluster = semantic.filter(~pl.col("removed")).select(
                pl.col("id").alias("_sid"), pl.col("cluster_id").alias("_sc")
            )
            kept = (
                kept.with_columns(pl.col("id").cast(pl.String).alias("_sid"))
                .join(rep_cluster, on="_sid", how="left", maintain_order="left")
                .with_columns(
                    pl.col("dup_cluster")
                    .cast(pl.String)
                    .fill_null(pl.col("_sc"))
                    .alias("dup_cluster")
                )
                .drop("_sid", "_sc")
            )
            clusters = _concat([minhash, semantic])
            removed = _concat([removed_before, records])
            stats["removed"] = len(gone)
        from builder.util.partitions import write_table

        for key, frame in (
            ("kept", kept),
            ("clusters", clusters),
            ("removed", removed),
            ("nodes", nodes),
            ("semantic", semantic),
        ):
            write_table(frame.to_arrow(), paths[key])
        stats["rows_out"] = kept.height
        ctx.log(
            f"[semdedup] {stats.get('duplicates', 0)} semantic near-duplicate(s)"
            + (" removed" if d.semantic else " reported (set [dedup] semantic = true to remove)")
        )
        return {"stats": stats}
