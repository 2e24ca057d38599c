"""Today's pipeline hooks of the quality gates (``builder.pipeline`` calls one per gate).

The gates themselves are batch algorithms with no I/O policy (``relevance``, ``codecheck``,
``judge``, ``semdedup``, ``metrics``); these functions are the thin file-in/file-out glue
over the run's ``work/`` directory, with completion markers like every other stage, so they
can later become stages of the stage contract unchanged:

- ``stage_quality`` after filtering: code checks, relevance, the judge; writes
  ``work/quality/{kept,rejected,embeddings}.parquet``.
- ``stage_semdedup`` after MinHash dedup: writes ``work/semdedup/{kept,clusters,removed,
  nodes}.parquet``.
- ``quality_summary`` before the card and report: diversity per node and the embedding map,
  written to ``work/diversity/quality_*``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from builder.records import sha256_hex

if TYPE_CHECKING:  # pragma: no cover
    from builder.pipeline import _Context
    from builder.records import Unit


def _write(df: pl.DataFrame, path: Path) -> None:
    from builder.io_tables import write_parquet_atomic

    write_parquet_atomic(df, path)


def _embeddings_frame(ids: list[str], vectors: np.ndarray) -> pl.DataFrame:
    dim = int(vectors.shape[1]) if vectors.ndim == 2 and len(vectors) else 1
    return pl.DataFrame(
        {"id": ids, "embedding": vectors.astype(np.float32).reshape(len(ids), dim)},
        schema={"id": pl.String, "embedding": pl.Array(pl.Float32, dim)},
    )


def load_embeddings(path: Path, ids: list[str]) -> np.ndarray | None:
    """The stored embeddings of ``ids`` in that order (None when any is missing)."""
    if not path.exists() or not ids:
        return None
    table = pl.read_parquet(path)
    found = pl.DataFrame({"id": ids}).join(table, on="id", how="left", maintain_order="left")
    if found["embedding"].null_count():
        return None
    return found["embedding"].to_numpy().astype(np.float32)


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    frames = [f for f in frames if f.height]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


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


def _judge_engine(ctx: _Context, llm: Any) -> Any:
    """The judge's own engine when ``[judge]`` names an endpoint, else None (use ``llm``)."""
    settings = judge_llm_settings(ctx.config)
    if settings is None:
        return None
    from builder.llm import open_engine, resolve_cache_dir

    return open_engine(
        settings,
        cache_dir=resolve_cache_dir(None, ctx.config.llm, root=ctx.config.root),
        progress=False,
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


def stage_quality(
    ctx: _Context, units: list[Unit], kept_path: Path, rej_path: Path, llm: Any
) -> tuple[Path, Path]:
    """Code checks, relevance and the judge over the filtered documents (module docstring).

    Returns the new (kept, rejected) paths: rejected holds the filter's rejections plus this
    stage's (reasons ``code_error``, ``off_topic``, ``low_value``)."""
    from builder.quality.judge import load_judge_template

    config = ctx.config
    f = config.filters
    out = ctx.work / "quality"
    paths = {n: out / f"{n}.parquet" for n in ("kept", "rejected", "embeddings")}
    template = (
        load_judge_template(config.path(config.judge.template)) if config.judge.enabled else None
    )
    fingerprint = sha256_hex(
        {
            "filter": ctx.markers.read("filter").get("fingerprint"),
            "units": sha256_hex([u.to_dict() for u in units]),
            "gates": {
                k: getattr(f, k)
                for k in ("min_relevance", "min_edu_score", "check_code", "drop_code_errors")
            },
            "embeddings": config.embeddings.model_dump(mode="json"),
            "judge": config.judge.model_dump(mode="json") if config.judge.enabled else None,
            "judge_template": template.sha256 if template else None,
            "judge_model": getattr(llm, "model_name", None) if config.judge.enabled else None,
            "verify": config.verify.model_dump(mode="json"),
        }
    )
    from builder.pipeline import _stage

    with _stage(ctx, "quality"):
        if ctx.markers.done("quality", fingerprint, paths.values()):
            ctx.log("[quality] up to date")
            return paths["kept"], paths["rejected"]
        ctx.markers.clear("quality")
        docs = pl.read_parquet(kept_path)
        rejected = [pl.read_parquet(rej_path)]
        stats: dict[str, Any] = {"rows_in": docs.height}
        t0 = time.perf_counter()
        # 5. code inside prose
        if f.check_code and docs.height:
            from builder.quality.codecheck import check_documents

            checks = check_documents(
                docs["text"].fill_null("").to_list(),
                docs["kind"].to_list() if "kind" in docs.columns else [None] * docs.height,
                config.verify,
                workers=config.verify.workers or 2,
            )
            docs = docs.with_columns(
                pl.Series("code_ok", [c.ok for c in checks], dtype=pl.Boolean),
                pl.Series("code_detail", [c.detail or None for c in checks], dtype=pl.String),
            )
            stats["code"] = {
                "checked": sum(c.ok is not None for c in checks),
                "ok": sum(c.ok is True for c in checks),
                "failed": sum(c.ok is False for c in checks),
            }
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
        # 1. relevance
        vectors = None
        if config.embeddings.enabled and docs.height:
            from builder.llm import resolve_cache_dir
            from builder.quality.embed import open_embedder
            from builder.quality.relevance import add_relevance, split_off_topic, unit_query

            embedder = open_embedder(
                config.embeddings,
                config.llm,
                resolve_cache_dir(None, config.llm, root=config.root),
                max_cost=llm.remaining() if hasattr(llm, "remaining") else None,
            )
            queries = {u.unit_id: unit_query(u) for u in units}
            vectors = embedder.embed(docs["text"].fill_null("").to_list())
            docs = add_relevance(docs, queries, embedder)
            cost = getattr(getattr(embedder, "stats", None), "cost", 0.0)
            if cost and hasattr(llm, "cost"):
                llm.cost += cost  # the build's meter covers the embeddings endpoint too
            _write(
                _embeddings_frame(docs["id"].cast(pl.String).to_list(), vectors),
                paths["embeddings"],
            )
            docs, off = split_off_topic(docs, f.min_relevance)
            rejected.append(off)
            rel = docs["relevance"].drop_nulls()
            stats["relevance"] = {
                "embedder": embedder.name,
                "min_relevance": f.min_relevance,
                "off_topic": off.height,
                "median_kept": round(float(rel.median()), 3) if rel.len() else None,
            }
            stats["embedder"] = embedder.name
        else:
            _write(_embeddings_frame([], np.zeros((0, 1), np.float32)), paths["embeddings"])
        # 2. the judge
        if config.judge.enabled and docs.height and template is not None:
            from builder.quality.judge import judge_frame, split_low_value

            own = _judge_engine(ctx, llm)
            try:
                engine = own or llm
                docs, jstats = judge_frame(
                    docs,
                    engine,
                    template,
                    config.judge,
                    units={u.unit_id: u for u in units},
                    max_cost=llm.remaining() if hasattr(llm, "remaining") else None,
                )
            finally:
                if own is not None:
                    own.close()
            if own is not None and hasattr(llm, "cost"):
                llm.cost += jstats.cost
            docs, low = split_low_value(docs, f.min_edu_score)
            rejected.append(low)
            stats["judge"] = {**jstats.to_dict(), "low_value": low.height}
            if jstats.failed:
                ctx.log(f"[quality] judge failed on {jstats.failed} document(s): {jstats.errors}")
        _write(docs, paths["kept"])
        _write(_concat(rejected), paths["rejected"])
        stats["rows_out"] = docs.height
        stats["seconds"] = round(time.perf_counter() - t0, 3)
        ctx.markers.mark("quality", fingerprint, stats=stats)
        ctx.did_work = True
        ctx.log(f"[quality] kept {docs.height} of {stats['rows_in']}")
    return paths["kept"], paths["rejected"]


def stage_semdedup(ctx: _Context, d_paths: dict[str, Path]) -> dict[str, Path]:
    """Semantic near-duplicates among MinHash's kept rows; removed when ``[dedup] semantic``."""
    from builder.diversity import node_rates
    from builder.quality.semdedup import removal_records, semantic_clusters

    config = ctx.config
    d = config.dedup
    out = ctx.work / "semdedup"
    paths = {n: out / f"{n}.parquet" for n in ("kept", "clusters", "removed", "nodes", "semantic")}
    emb_path = ctx.work / "quality" / "embeddings.parquet"
    fingerprint = sha256_hex(
        {
            "dedup": ctx.markers.read("dedup").get("fingerprint"),
            "quality": ctx.markers.read("quality").get("fingerprint"),
            "settings": [d.semantic, d.semantic_threshold, d.semantic_cluster_size, d.enabled],
        }
    )
    from builder.pipeline import _stage

    with _stage(ctx, "semdedup"):
        if ctx.markers.done("semdedup", fingerprint, paths.values()):
            ctx.log("[semdedup] up to date")
            return {
                "kept": paths["kept"],
                "clusters": paths["clusters"],
                "removed": paths["removed"],
            }
        ctx.markers.clear("semdedup")
        docs = pl.read_parquet(d_paths["kept"])
        minhash = pl.read_parquet(d_paths["clusters"])
        removed_before = pl.read_parquet(d_paths["removed"])
        ids = docs["id"].cast(pl.String).to_list() if docs.height else []
        vectors = load_embeddings(emb_path, ids) if d.enabled else None
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
        flagged = docs.select(
            pl.col("id").cast(pl.String),
            *([pl.col("taxonomy_path")] if "taxonomy_path" in docs.columns else []),
        ).with_columns(
            pl.col("id")
            .is_in(semantic.filter(pl.col("removed"))["id"].implode())
            .alias("semantic_dup")
        )
        nodes = node_rates(flagged, ["semantic_dup"]) if docs.height else pl.DataFrame()
        kept, clusters, removed = docs, minhash, removed_before
        if d.semantic and semantic.filter(pl.col("removed")).height:
            records = removal_records(semantic, d.semantic_threshold)
            gone = set(records["id"].to_list())
            fields = docs.with_columns(pl.col("id").cast(pl.String)).drop(
                [c for c in ("stage", "reason", "detail", "dup_cluster") if c in docs.columns]
            )
            joined = records.join(fields, on="id", how="left").with_columns(
                pl.col("cluster_id").alias("dup_cluster")
            )
            kept = docs.filter(~pl.col("id").cast(pl.String).is_in(list(gone)))
            rep_cluster = semantic.filter(~pl.col("removed")).select(
                "id", pl.col("cluster_id").alias("_sc")
            )
            kept = (
                kept.with_columns(pl.col("id").cast(pl.String).alias("_sid"))
                .join(rep_cluster.rename({"id": "_sid"}), on="_sid", how="left")
                .with_columns(
                    (
                        pl.col("dup_cluster").cast(pl.String)
                        if "dup_cluster" in kept.columns
                        else pl.lit(None, pl.String)
                    )
                    .fill_null(pl.col("_sc"))
                    .alias("dup_cluster")
                )
                .drop("_sid", "_sc")
            )
            clusters = _concat([minhash, semantic])
            removed = _concat([removed_before, joined])
            stats["removed"] = len(gone)
        for key, frame in (("kept", kept), ("clusters", clusters), ("removed", removed)):
            _write(frame, paths[key])
        _write(nodes, paths["nodes"])
        _write(semantic, paths["semantic"])
        stats["rows_out"] = kept.height
        ctx.markers.mark("semdedup", fingerprint, stats=stats)
        ctx.did_work = True
        ctx.log(
            f"[semdedup] {stats.get('duplicates', 0)} semantic near-duplicate(s)"
            + (" removed" if d.semantic else " reported (set [dedup] semantic = true to remove)")
        )
    return {"kept": paths["kept"], "clusters": paths["clusters"], "removed": paths["removed"]}


def quality_summary(ctx: _Context, clean_path: Path) -> Any:
    """Diversity per node and the embedding map of the final documents, written to
    ``work/diversity/quality_*``; returns the ``QualitySummary`` (None without documents)."""
    from builder.quality.metrics import embedding_map, node_diversity
    from builder.quality.summary import QualitySummary

    docs = pl.read_parquet(clean_path)
    if docs.height == 0:
        return None
    ids = docs["id"].cast(pl.String).to_list()
    vectors = load_embeddings(ctx.work / "quality" / "embeddings.parquet", ids)
    nodes = node_diversity(docs, vectors)
    sem_nodes = ctx.work / "semdedup" / "nodes.parquet"
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
    qstats = ctx.markers.read("quality").get("stats") or {}
    sstats = ctx.markers.read("semdedup").get("stats") or {}
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
    result.write(ctx.work / "diversity")
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
