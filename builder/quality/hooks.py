"""The quality gates' glue outside their stages (``builder.stages.quality``): the judge's
endpoint settings, its requests and estimate for ``corpus plan``, and ``quality_summary``
(diversity per node and the embedding map, written to ``work/diversity/quality_*`` before
the card and report)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

if TYPE_CHECKING:  # pragma: no cover
    from builder.stages.base import RunContext


#: Documents per node that the text diversity metrics sample (``node_diversity``'s default).
SAMPLE = 500


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


def _sampled_texts(clean_path: Path, docs: pl.DataFrame, sample: int = SAMPLE) -> list[str]:
    """The texts of ``clean_path`` that ``node_diversity`` samples (every node's ``sample``
    documents with the smallest id hashes, as ``builder.quality.metrics`` picks them), and
    ``""`` for the others: what that function reads is the same, and the corpus's texts are
    read in batches, never held together."""
    from builder.diversity import expand_nodes
    from builder.quality.metrics import _sample

    base = docs.select(
        pl.col("id").cast(pl.String).alias("_id"),
        *([pl.col("taxonomy_path")] if "taxonomy_path" in docs.columns else []),
    ).with_row_index("_row")
    ids = base["_id"].to_list()
    needed: set[int] = set()
    for _key, group in base.pipe(expand_nodes).group_by(["node", "depth"]):
        rows = group["_row"].to_list()
        needed.update(rows[i] for i in _sample([ids[r] for r in rows], sample))
    texts = [""] * docs.height
    offset = 0
    for batch in pq.ParquetFile(clean_path).iter_batches(batch_size=4096, columns=["text"]):
        for i, text in enumerate(batch.column(0).to_pylist()):
            if offset + i in needed:
                texts[offset + i] = text or ""
        offset += batch.num_rows
    return texts


def quality_summary(ctx: RunContext, clean_path: Path) -> Any:
    """Diversity per node and the embedding map of the final documents, written to
    ``work/diversity/quality_*``; returns the ``QualitySummary`` (None without documents)."""
    from builder.quality.metrics import embedding_map, node_diversity
    from builder.quality.summary import QualitySummary
    from builder.stages.quality import load_embeddings

    names = pq.read_schema(clean_path).names
    docs = pl.read_parquet(
        clean_path, columns=[c for c in ("id", "taxonomy_path", "discipline") if c in names]
    )
    if docs.height == 0:
        return None
    ids = docs["id"].cast(pl.String).to_list()
    vectors = load_embeddings(ctx, ids)
    # The text metrics read only each node's sample: the other texts are never held.
    docs = docs.with_columns(pl.Series("text", _sampled_texts(clean_path, docs), pl.String))
    nodes = node_diversity(docs, vectors)
    sem_nodes = ctx.paths.work / "semdedup" / "nodes.parquet"
    if sem_nodes.exists():
        sem = pl.read_parquet(sem_nodes)
        if sem.height:
            nodes = nodes.join(
                sem.select("node", pl.col("semantic_dup").alias("semantic_dups")),
                on="node",
                how="left",
            )
    labels = (
        docs["discipline"].fill_null("?").to_list()
        if "discipline" in docs.columns
        else ["?"] * len(ids)
    )
    emap = (
        embedding_map(vectors, labels, ids)
        if vectors is not None
        else embedding_map(np.zeros((0, 2)), [], [])
    )
    qstats = _stage_stats(ctx, "quality")
    sstats = _stage_stats(ctx, "semdedup")
    summary: dict[str, Any] = {"sample": SAMPLE}
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
