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

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from builder.records import DOCUMENT_SCHEMA, REJECTED_SCHEMA, sha256_hex
from builder.stages.base import PartitionStage, RunContext, Stage, upstream
from builder.stages.filter import kept_parts
from builder.stages.walk import read_units, unit_parts
from builder.util.files import atomic_copy, atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from builder.config import CorpusConfig

#: A document's embedding, and its text's length in characters (semantic dedup's choice of
#: representative needs it, and reading it here spares that stage a pass over every text).
EMBEDDINGS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("embedding", pa.list_(pa.float32())),
        pa.field("length", pa.int64()),
    ]
)


def embeddings_table(ids: pl.Series, vectors: np.ndarray, lengths: pl.Series) -> pa.Table:
    """``EMBEDDINGS_SCHEMA`` rows built column-wise from the ``(n, d)`` array (a Python
    list per vector costs ~0.25 ms a document) and the texts' lengths."""
    n, d = vectors.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
    return pa.table(
        {
            "id": ids.to_arrow().cast(pa.string()),
            "embedding": pa.ListArray.from_arrays(offsets, values),
            "length": lengths.cast(pl.Int64).to_arrow(),
        },
        schema=EMBEDDINGS_SCHEMA,
    )


def _frame(table: pa.Table) -> pl.DataFrame:
    return pl.from_arrow(table)  # type: ignore[return-value]


#: Local embedders ``QualityStage.preload`` opened in this process, by their settings: the
#: first copy of the stage to need one takes it.
_PRELOADED: dict[str, Any] = {}

#: The unit fields ``unit_query`` reads (and the id).
_QUERY_COLUMNS = ("unit_id", "topic_name", "topic", "description", "session", "concepts")


class QualityStage(PartitionStage):
    """Code in prose, relevance and the judge over each kept partition (module docstring)."""

    name = "quality"
    uses_llm = True  # the judge (when enabled) and the embeddings endpoint's budget
    follows = ("filter", "kept")

    def __init__(self) -> None:
        self._embedder: Any = None
        self._queries: dict[str, str] | None = None
        self._units: dict[str, Any] | None = None
        # fresh here too: a follower's worker calls run_partition without run
        self._stats: dict[str, Any] = self._fresh_stats()

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
        return sha256_hex([upstream(ctx, "filter"), self.task_fingerprint(ctx)])

    def task_fingerprint(self, ctx: RunContext) -> str | None:
        config = ctx.config
        f = config.filters
        template = self._template(ctx)
        judge_model = None
        if config.judge.enabled:
            judge_model = config.judge.model if config.judge.base_url else ctx.llm().model_name
        return sha256_hex(
            {
                "upstream": upstream(ctx, "walk"),  # the units' queries
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

    def warm(self, ctx: RunContext) -> str | None:
        """The offline embedding model and the units' queries, loaded ahead of the first
        task (an endpoint embedder opens with the task: it spends from the budget)."""
        config = ctx.config
        if not config.embeddings.enabled or config.embeddings.base_url:
            return None
        early = self._embedder is None and config.embeddings.model_dump_json() in _PRELOADED
        self._open_relevance(ctx)
        assert self._embedder is not None
        when = " (loaded as the worker started)" if early else ""
        return f"{self._embedder.name}{when}, {len(self._queries or {})} units"

    def preload(self, config: CorpusConfig) -> None:
        """The local embedding model and what the tasks import (an endpoint embedder opens
        with the task: it spends from the build's budget)."""
        if not config.embeddings.enabled or config.embeddings.base_url:
            return
        import scipy.sparse  # noqa: F401 - the embedder's sums

        from builder.quality import relevance  # noqa: F401
        from builder.quality.embed import open_embedder

        key = config.embeddings.model_dump_json()
        if key not in _PRELOADED:
            _PRELOADED[key] = open_embedder(config.embeddings, config.llm)

    def _open_relevance(self, ctx: RunContext) -> None:
        """The embedder and the units' queries, once per copy of the stage."""
        config = ctx.config
        if self._embedder is None:
            from builder.llm import resolve_cache_dir
            from builder.quality.embed import open_embedder

            self._embedder = _PRELOADED.pop(config.embeddings.model_dump_json(), None)
            if self._embedder is None:
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

    def _load_units(self, ctx: RunContext) -> None:
        from builder.quality.relevance import unit_query

        self._queries, self._units = {}, {}
        judge = ctx.config.judge.enabled
        for part in unit_parts(ctx):
            if judge:
                for unit in read_units(part):
                    self._queries[unit.unit_id] = unit_query(unit)
                    self._units[unit.unit_id] = unit
                continue
            # Only the query's fields, as plain rows (every worker loads every unit).
            names = set(pq.read_schema(part).names)
            table = pq.read_table(part, columns=[c for c in _QUERY_COLUMNS if c in names])
            for row in table.to_pylist():
                self._queries[row["unit_id"]] = unit_query(row)

    def needs_llm(self, ctx: RunContext) -> bool:
        return ctx.config.judge.enabled

    def local_only(self, ctx: RunContext) -> bool:
        # An embeddings endpoint spends from the build's remaining budget, known here only.
        embeddings = ctx.config.embeddings
        return embeddings.enabled and bool(embeddings.base_url)

    @staticmethod
    def _fresh_stats() -> dict[str, Any]:
        # relevance_cpu_seconds / relevance_docs: the gate's own CPU cost (bench/build_scale.py
        # reports documents per CPU-second, which a loaded machine does not distort as it
        # does wall time); "seconds" keeps it out of run-to-run comparisons (tests' untimed)
        return {
            "code": {"checked": 0, "ok": 0, "failed": 0},
            "off_topic": 0,
            "low_value": 0,
            "relevance_docs": 0,
            "relevance_cpu_seconds": 0.0,
        }

    def run(self, ctx: RunContext) -> dict[str, Any]:
        self._stats = self._fresh_stats()
        self._embedder = None
        self._queries = self._units = None
        return super().run(ctx)

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
        out: dict[str, Any] = {"kept": [], "rejected": [], "embeddings": []}
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

            started = time.process_time()
            self._stats["relevance_docs"] += docs.height
            self._open_relevance(ctx)
            assert self._embedder is not None
            vectors = self._embedder.embed(docs["text"].fill_null("").to_list())
            out["embeddings"] = embeddings_table(
                docs["id"].cast(pl.String), vectors, docs["text"].str.len_chars().fill_null(0)
            )
            docs = add_relevance(docs, self._queries or {}, self._embedder, vectors=vectors)
            docs, off = split_off_topic(docs, f.min_relevance)
            self._stats["off_topic"] += off.height
            self._stats["relevance_cpu_seconds"] += time.process_time() - started
            rejected.append(off)
        # The educational-value judge.
        if config.judge.enabled and docs.height:
            from builder.quality.judge import judge_frame, split_low_value

            if self._units is None:
                self._load_units(ctx)
            # The build's meter and --max-cost cover the judge's own endpoint too (on Ray the
            # driver's engines answer through the broker).
            docs, jstats = judge_frame(
                docs, ctx.judge_llm(), self._template(ctx), config.judge, units=self._units
            )
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
        # Column-wise to the sinks' schemas (``to_table``), never a dict per document.
        out["kept"] = docs.to_arrow()
        out["rejected"] = _concat(rejected).to_arrow()
        return out

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


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    frames = [f for f in frames if f.height]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


class SemDedupStage(Stage):
    """Semantic near-duplicates among MinHash's survivors (module docstring)."""

    name = "semdedup"
    #: The most survivors held at once while ``kept.parquet`` was written (tests assert it).
    max_rows_held: int = 0
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
        """Streams the survivors (``builder.quality.buckets``): memory is bounded by a bucket
        and the k-means sample, never the corpus."""
        from builder.quality.buckets import streamed_semantic_clusters
        from builder.quality.semdedup import clusters_result, removal_records
        from builder.util.partitions import count_rows, write_table

        d = ctx.config.dedup
        kept_in, clusters_in, removed_in = self.inputs(ctx)
        paths = dict(zip(self.FILES, self.outputs(ctx), strict=True))
        minhash = pl.read_parquet(clusters_in)  # duplicates only: small
        removed_before = pl.read_parquet(removed_in)
        rows_in = count_rows([kept_in])
        stats: dict[str, Any] = {"rows_in": rows_in, "applied": d.semantic}
        semantic = clusters_result([], 0, 0).clusters
        result = None
        copying = None
        if not d.semantic:
            # Report only: the survivors pass unchanged, so the input file is copied as it
            # is (its row groups are dedup's, already of a partition's size), on a thread
            # while the near-duplicates are found.
            pool = ThreadPoolExecutor(max_workers=1)
            copying = pool.submit(_copy_kept, kept_in, paths["kept"])
            pool.shutdown(wait=False)
        if d.enabled and rows_in > 1:
            try:
                result = streamed_semantic_clusters(
                    ctx,
                    kept_in,
                    threshold=d.semantic_threshold,
                    cluster_size=d.semantic_cluster_size,
                )
            except BaseException:
                if copying is not None:  # no thread outlives the stage
                    copying.exception()
                raise
        if result is not None:
            semantic = result.clusters
            stats.update(
                groups=result.groups, duplicates=result.removed, kmeans=result.kmeans_clusters
            )
        dup_ids = semantic.filter(pl.col("removed"))["id"]
        nodes = _node_rates(kept_in, dup_ids) if rows_in else pl.DataFrame()
        clusters, removed = minhash, removed_before
        gone: pl.Series | None = None
        rep_cluster: pl.DataFrame | None = None
        if d.semantic and len(dup_ids):
            records = removal_records(semantic, d.semantic_threshold)
            gone = records["id"]
            rep_cluster = semantic.filter(~pl.col("removed")).select(
                pl.col("id").alias("_sid"), pl.col("cluster_id").alias("_sc")
            )
            clusters = _concat([minhash, semantic])
            removed = _concat([removed_before, records])
            stats["removed"] = records.height
        # Row groups of at most a read batch: decontam's tasks are slices along them.
        if copying is not None:
            self.max_rows_held = copying.result()
        else:
            self.max_rows_held = _write_kept(kept_in, paths["kept"], gone, rep_cluster)
        for key, frame in (
            ("clusters", clusters),
            ("removed", removed),
            ("nodes", nodes),
            ("semantic", semantic),
        ):
            write_table(frame.to_arrow(), paths[key])
        stats["rows_out"] = count_rows([paths["kept"]])
        ctx.log(
            f"[semdedup] {stats.get('duplicates', 0)} semantic near-duplicate(s)"
            + (" removed" if d.semantic else " reported (set [dedup] semantic = true to remove)")
        )
        return {"stats": stats}


def _copy_kept(kept_in: Path, out: Path) -> int:
    """``kept_in``'s bytes to ``out`` (report-only semantic dedup: nothing is removed);
    returns the rows held at once: none."""
    atomic_copy(kept_in, out)
    return 0


def _write_kept(
    kept_in: Path, out: Path, gone: pl.Series | None, rep_cluster: pl.DataFrame | None
) -> int:
    """Write the survivors to ``out`` a read batch at a time: without the ``gone`` ids, the
    kept representatives' ``dup_cluster`` filled with their semantic group. Returns the most
    rows held at once (a batch; never the corpus)."""
    from builder.quality.buckets import READ_ROWS
    from builder.util.partitions import iter_batches

    schema = pq.read_schema(kept_in)
    held = 0
    gone_list = gone.implode() if gone is not None else None

    def write(tmp: Path) -> None:
        nonlocal held
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for table in iter_batches(kept_in, batch_rows=READ_ROWS):
                held = max(held, table.num_rows)
                if gone_list is not None and rep_cluster is not None:
                    frame = (
                        _frame(table)
                        .with_columns(pl.col("id").cast(pl.String).alias("_sid"))
                        .filter(~pl.col("_sid").is_in(gone_list))
                        .join(rep_cluster, on="_sid", how="left", maintain_order="left")
                        .with_columns(
                            pl.col("dup_cluster")
                            .cast(pl.String)
                            .fill_null(pl.col("_sc"))
                            .alias("dup_cluster")
                        )
                        .drop("_sid", "_sc")
                    )
                    table = frame.to_arrow()
                writer.write_table(table.cast(schema))

    atomic_write(out, write)
    return held


def _node_rates(kept: Path, dup_ids: pl.Series) -> pl.DataFrame:
    """``node_rates`` of the semantic duplicates over the survivors, one batch at a time
    (per-node counts add up; the rates are computed from the sums)."""
    from builder.diversity import node_rates
    from builder.quality.buckets import READ_ROWS
    from builder.util.partitions import iter_batches

    dups = dup_ids.implode()
    names = pq.read_schema(kept).names
    columns = [c for c in ("id", "taxonomy_path") if c in names]
    counts = []
    for table in iter_batches(kept, batch_rows=READ_ROWS, columns=columns):
        flagged = _frame(table).with_columns(
            pl.col("id").cast(pl.String).is_in(dups).alias("semantic_dup")
        )
        counts.append(node_rates(flagged, ["semantic_dup"]))
    merged = pl.concat(counts)
    summed = merged.group_by("node", "depth").agg(
        pl.col("docs").sum(), pl.col("semantic_dup").sum()
    )
    return (
        summed.with_columns(
            (pl.col("semantic_dup") / pl.col("docs")).round(4).alias("semantic_dup_rate")
        )
        .select(merged.columns)
        .cast(merged.schema)  # type: ignore[arg-type]
        .sort("depth", "node")
    )
