"""The quality gates' glue outside their stages (``builder.stages.quality``): the judge's
endpoint settings, its requests and estimate for ``corpus plan``, and ``quality_summary``
(diversity per node and the embedding map, written to ``work/diversity/quality_*`` before
the card and report)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from builder.util.memory import release_memory
from builder.util.partitions import iter_batches, list_parts

if TYPE_CHECKING:  # pragma: no cover
    from builder.stages.base import RunContext


def judge_llm_settings(config: Any, *, keyless: bool = False) -> Any:
    """The ``[llm]`` settings of the judge's own endpoint (None: the judge uses ``[llm]``).
    ``keyless`` drops the API key variable (``corpus plan`` needs none)."""
    j = config.judge
    if not j.base_url:
        return None
    return config.llm.model_copy(
        update={
            "base_url": j.base_url,
            "model": j.model,
            "api_key_env": None if keyless else j.api_key_env,
            "kind": j.kind,
            "endpoints": [],
            "embedded": False,
        }
    )


def estimate_judge(config: Any, requests: list[Any], engine: Any, cache_dir: Any = None) -> Any:
    """``corpus plan``'s estimate of the judge requests: priced and cache-checked by the
    judge's own endpoint when ``[judge]`` names one, else by the teacher's ``engine``."""
    settings = judge_llm_settings(config, keyless=True)
    if settings is None:
        return engine.estimate(requests)
    from builder.llm import open_engine, resolve_cache_dir

    directory = resolve_cache_dir(cache_dir, config.llm, root=config.root)
    with open_engine(settings, cache_dir=directory, progress=False) as judge:
        return judge.estimate(requests)


def _stage_stats(ctx: RunContext, stage: str) -> dict[str, Any]:
    counters = ctx.counters.get(stage) or ctx.markers.read(stage).get("counters") or {}
    return counters.get("stats") or {}


#: Rows of the corpus (texts and embeddings) held at once by ``quality_summary``.
BUCKET_ROWS = 50_000
_COLUMNS = ("id", "text", "taxonomy_path", "discipline")


def corpus_with_embeddings(
    ctx: RunContext, clean_path: Path, *, bucket_rows: int = BUCKET_ROWS
) -> Iterator[tuple[pl.DataFrame, np.ndarray | None]]:
    """The corpus at ``clean_path`` (``id``, ``text``, ``taxonomy_path``, ``discipline`` and
    its row number ``_row``) with the quality stage's embeddings of those rows (None when
    any is missing), in batches of about ``bucket_rows`` rows: the corpus and the
    embeddings are split by a hash of the id into buckets on disk, then joined one bucket
    at a time, so memory is bounded by a bucket, not by the corpus."""
    from builder.util.partitions import count_rows

    total = count_rows([clean_path])
    if total == 0:
        return
    columns = [c for c in _COLUMNS if c in pq.read_schema(clean_path).names]
    embedding_parts = list_parts(ctx.paths.stage_dir("quality") / "embeddings")
    buckets = max(1, -(-total // max(1, bucket_rows)))
    if buckets == 1:
        docs = pl.read_parquet(clean_path, columns=columns).with_row_index("_row")
        embeddings = (
            pl.concat([pl.read_parquet(p) for p in embedding_parts]) if embedding_parts else None
        )
        yield docs, _vectors(docs, embeddings)
        return
    tmp = ctx.paths.work / "diversity" / "_buckets"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _split(
            iter_batches(clean_path, batch_rows=bucket_rows, columns=columns),
            tmp / "docs",
            buckets,
            rows=True,
        )
        _split(iter_batches(embedding_parts, batch_rows=bucket_rows), tmp / "emb", buckets)
        for b in range(buckets):
            release_memory()  # the last bucket's texts and vectors, before the next one
            docs_path, emb_path = tmp / "docs" / f"{b}.parquet", tmp / "emb" / f"{b}.parquet"
            if not docs_path.exists():
                continue
            docs = pl.read_parquet(docs_path)
            embeddings = pl.read_parquet(emb_path) if emb_path.exists() else None
            yield docs, _vectors(docs, embeddings)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _split(tables: Iterator[pa.Table], out: Path, buckets: int, *, rows: bool = False) -> None:
    """Append each table's rows to ``out/<hash(id) % buckets>.parquet`` (with the running
    row number as ``_row`` when ``rows``)."""
    out.mkdir(parents=True, exist_ok=True)
    writers: dict[int, pq.ParquetWriter] = {}
    offset = 0
    try:
        for table in tables:
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
            if rows:
                frame = frame.with_row_index("_row", offset=offset)
            offset += frame.height
            frame = frame.with_columns(
                (pl.col("id").cast(pl.String).hash(seed=7) % buckets).alias("_bucket")
            )
            for (b,), part in frame.partition_by("_bucket", as_dict=True).items():
                arrow = part.drop("_bucket").to_arrow()
                writer = writers.get(b)
                if writer is None:
                    writer = writers[b] = pq.ParquetWriter(out / f"{b}.parquet", arrow.schema)
                writer.write_table(arrow.cast(writer.schema))
    finally:
        for writer in writers.values():
            writer.close()


def _vectors(docs: pl.DataFrame, embeddings: pl.DataFrame | None) -> np.ndarray | None:
    """The embeddings of ``docs``' rows in order (None when any is missing)."""
    if embeddings is None or embeddings.height == 0 or docs.height == 0:
        return None
    found = docs.select(pl.col("id").cast(pl.String)).join(
        embeddings, on="id", how="left", maintain_order="left"
    )
    column = found["embedding"]
    if column.null_count():
        return None
    return embedding_matrix(column)


def embedding_matrix(column: pl.Series) -> np.ndarray:
    """A list-of-float column of equal-length vectors as an ``(n, d)`` float32 array
    (through one flat buffer, never a Python list per row)."""
    n = column.len()
    flat = column.explode().to_numpy().astype(np.float32, copy=False)
    return flat.reshape(n, -1) if n else np.zeros((0, 0), dtype=np.float32)


def quality_summary(ctx: RunContext, clean_path: Path) -> Any:
    """Diversity per node and the embedding map of the final documents, written to
    ``work/diversity/quality_*``; returns the ``QualitySummary`` (None without documents).
    Streams the corpus (``corpus_with_embeddings``): memory bounded by a bucket and the
    taxonomy, whatever the corpus size."""
    from builder.quality.metrics import DiversityAccumulator
    from builder.quality.summary import QualitySummary

    acc = DiversityAccumulator()
    seen = 0
    for docs, vectors in corpus_with_embeddings(ctx, clean_path):
        acc.add(docs, vectors)
        seen += docs.height
    if seen == 0:
        return None
    nodes = acc.nodes()
    sem_nodes = ctx.paths.work / "semdedup" / "nodes.parquet"
    if sem_nodes.exists():
        sem = pl.read_parquet(sem_nodes)
        if sem.height:
            nodes = nodes.join(
                sem.select("node", pl.col("semantic_dup").alias("semantic_dups")),
                on="node",
                how="left",
            )
    emap = acc.map()
    qstats = _stage_stats(ctx, "quality")
    sstats = _stage_stats(ctx, "semdedup")
    summary: dict[str, Any] = {"sample": 500}
    if qstats.get("embedder"):
        from builder.quality.embed import WORDLLAMA_MODEL, WORDLLAMA_TERMS

        summary["embedder"] = qstats["embedder"]
        if qstats["embedder"] == WORDLLAMA_MODEL:
            summary["embedder_terms"] = WORDLLAMA_TERMS
    for key in ("relevance", "code", "judge"):
        if qstats.get(key):
            summary[key] = {k: v for k, v in qstats[key].items() if not isinstance(v, dict)}
    if sstats:
        summary["semantic"] = {
            "threshold": ctx.config.dedup.semantic_threshold,
            "duplicates": sstats.get("duplicates", 0),
            "removed": sstats.get("removed", 0),
        }
    result = QualitySummary(nodes=nodes, map=emap, summary=summary)
    result.write(ctx.paths.work / "diversity")
    return result


def plan_judge(config: Any, requests: list[Any]) -> list[Any]:
    """Stand-in judge requests for ``corpus plan``: one per generated document, with a text
    of the size the teacher is expected to write (an upper bound: filters drop some first)."""
    if not config.judge.enabled:
        return []
    from builder.quality.judge import judge_request, load_judge_template

    template = load_judge_template(config.path(config.judge.template))
    fraction = config.llm.expected_output_fraction
    out = []
    for r in requests:
        words = int((r.params.get("max_tokens") or config.llm.max_tokens) * fraction * 0.75)
        doc = {
            "id": f"plan:{r.id}",
            "text": " x" * words,
            "kind": r.metadata.get("kind"),
            "discipline": r.metadata.get("discipline"),
        }
        out.append(judge_request(doc, template, config.judge))
    return out
