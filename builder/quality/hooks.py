"""The quality gates' glue outside their stages (``builder.stages.quality``): the judge's
endpoint settings, its requests and estimate for ``corpus plan``, and ``quality_summary``
(diversity per node and the embedding map, written to ``work/diversity/quality_*`` before
the card and report)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from builder.quality.buckets import DIVERSITY_COLUMNS, EmbeddedCorpus
from builder.util.files import remove_temp_files

if TYPE_CHECKING:  # pragma: no cover
    from builder.stages.base import RunContext

#: Node-sample texts held at once by the diversity summary (a group of nodes' samples).
SAMPLE_TEXTS = 20_000
#: Taxonomy nodes whose d x d Gram matrices (with their waiting rows) the summary holds at
#: once: 128 x 640 KB at 256 dims = 80 MB; a node with fewer documents than dimensions
#: counts as its float32 rows (a topic of 160 documents: 160 KB). At 200k documents the
#: passes overlap the shards' writing: 200 nodes at a time made assemble's peak ~55 MB
#: higher for the same CPU (320: 2 passes instead of 3, ~0.8 CPU s less, +95 MB).
GRAM_NODES = 128


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


def quality_summary(ctx: RunContext, clean_path: Path) -> Any:
    """Diversity per node and the embedding map of the final documents, written to
    ``work/diversity/quality_*``; returns the ``QualitySummary`` (None without documents).
    Streams the corpus (``EmbeddedCorpus``): memory bounded by a bucket and the
    taxonomy, whatever the corpus size."""
    from builder.quality import buckets
    from builder.quality.metrics import DiversityAccumulator
    from builder.quality.summary import QualitySummary

    # The node samples hold row numbers; their texts are read back a group of nodes at a
    # time (every document of a large corpus is in some topic's sample).
    # The Gram matrices (512 KB a node at 256 dims) are summed again over the buckets for
    # GRAM_NODES nodes at a time instead of all of them at once.
    # Buckets of at most ``[run] partition_rows`` rows (not ``BUCKET_ROWS``, 50k): a bucket's
    # ids, paths and vectors are read, joined and turned into one float32 matrix, ~3 copies
    # of ~1 KB a row at 256 dims. A 20k-document run is one bucket either way; at 200k,
    # 50k-row buckets peaked at 797 MB against 564 with 20k rows (~15 CPU s cheaper: fewer
    # files and passes' reads; bench/RESULTS.md, "Assemble stage").
    bucket_rows = min(buckets.BUCKET_ROWS, ctx.config.run.partition_rows)
    # A killed assembly may have stopped this mid-write (it runs beside the shards).
    remove_temp_files(ctx.paths.work / "diversity")
    # The lexical measures read at most ``[output] diversity_sample`` texts per node.
    sample = ctx.config.output.diversity_sample
    acc = DiversityAccumulator(sample=sample, keep_texts=False, gram_nodes=GRAM_NODES)
    with EmbeddedCorpus(ctx, clean_path, DIVERSITY_COLUMNS, bucket_rows=bucket_rows) as corpus:
        if corpus.rows == 0:
            return None
        for docs, vectors in corpus:
            acc.add(docs, vectors)
        nodes = acc.nodes(
            groups=corpus.text_groups, batch_rows=SAMPLE_TEXTS, batches=lambda: iter(corpus)
        )
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
    summary: dict[str, Any] = {
        "sample": sample,
        "lexical_measures": (
            f"compression ratio and distinct-n on a sample of at most {sample} documents per "
            "node (smallest id hash; [output] diversity_sample); similarity and Vendi on all"
        ),
    }
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
