"""Relevance: does a document talk about the unit it was generated for?

``relevance`` is the cosine between an embedding of the unit (topic name, description,
session, concepts) and an embedding of the document's text. A story about a king written
for a Python session on dictionaries scores near 0.1; an on-topic paragraph near 0.6 (the
bundled WordLlama model). Documents below ``[filters] min_relevance`` are dropped with
reason ``off_topic`` and the score in the detail. The default threshold comes from the
labelled set of bench/quality.py (see bench/RESULTS.md).

Batch functions over one partition; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from builder.quality.embed import Embedder

STAGE = "quality"
REASON = "off_topic"


def unit_query(unit: Any) -> str:
    """The text that stands for a unit: topic name, description, session and concepts.

    ``unit`` is a ``builder.records.Unit`` or a mapping with the same field names.
    """
    get = unit.get if isinstance(unit, Mapping) else lambda k: getattr(unit, k, None)
    parts = [get("topic_name") or get("topic"), get("description"), get("session")]
    concepts = get("concepts") or ()
    if isinstance(concepts, str):
        concepts = [concepts]
    lines = [str(p).strip() for p in parts if p]
    if concepts:
        lines.append(", ".join(str(c) for c in concepts))
    return ". ".join(line.rstrip(".") for line in lines if line)


def relevance_scores(
    texts: Sequence[str],
    queries: Sequence[str],
    embedder: Embedder,
    *,
    vectors: np.ndarray | None = None,
) -> np.ndarray:
    """Cosine of ``texts[i]`` and ``queries[i]`` for every i (each distinct query embedded
    once); ``vectors``: the texts' embeddings when the caller already has them."""
    if len(texts) != len(queries):
        raise ValueError("texts and queries differ in length")
    if vectors is not None and len(vectors) != len(texts):
        raise ValueError("texts and vectors differ in length")
    if not texts:
        return np.zeros(0, dtype=np.float32)
    distinct = list(dict.fromkeys(queries))
    index = {q: i for i, q in enumerate(distinct)}
    q_vecs = embedder.embed(distinct)
    d_vecs = vectors if vectors is not None else embedder.embed(list(texts))
    rows = np.fromiter((index[q] for q in queries), dtype=np.int64, count=len(queries))
    return np.einsum("ij,ij->i", d_vecs, q_vecs[rows]).astype(np.float32)


def add_relevance(
    frame: pl.DataFrame,
    queries: Mapping[str, str],
    embedder: Embedder,
    *,
    text_column: str = "text",
    unit_column: str = "unit_id",
    vectors: np.ndarray | None = None,
) -> pl.DataFrame:
    """``frame`` with a Float32 ``relevance`` column (null where the unit is unknown);
    ``vectors``: the embeddings of ``frame``'s texts, row for row, if already computed."""
    units = frame[unit_column].to_list() if unit_column in frame.columns else [None] * frame.height
    known = [i for i, u in enumerate(units) if u is not None and u in queries]
    values: list[float | None] = [None] * frame.height
    if known:
        texts = frame[text_column].to_list()
        scores = relevance_scores(
            [texts[i] or "" for i in known],
            [queries[units[i]] for i in known],
            embedder,
            vectors=None if vectors is None else vectors[np.asarray(known, dtype=np.int64)],
        )
        for i, s in zip(known, scores.tolist(), strict=True):
            values[i] = round(float(s), 4)
    return frame.with_columns(pl.Series("relevance", values, dtype=pl.Float32))


def split_off_topic(
    frame: pl.DataFrame, min_relevance: float | None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(kept, rejected): rows whose ``relevance`` is below ``min_relevance`` are rejected with
    ``stage``/``reason``/``detail``; unknown relevance (null) is kept."""
    if min_relevance is None or "relevance" not in frame.columns:
        return frame, frame.clear()
    low = pl.col("relevance").is_not_null() & (pl.col("relevance") < min_relevance)
    rejected = frame.filter(low).with_columns(
        pl.lit(STAGE).alias("stage"),
        pl.lit(REASON).alias("reason"),
        pl.format(
            "relevance {} < min_relevance {}",
            pl.col("relevance").round(3),
            pl.lit(min_relevance),
        ).alias("detail"),
    )
    return frame.filter(~low), rejected
