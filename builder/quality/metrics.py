"""Diversity you can see: lexical and embedding diversity per taxonomy node and corpus.

Following Shaib et al. ("Standardizing the measurement of text diversity", 2024), several
measures are reported together because each misses something:

* ``compression_ratio``: bytes of the concatenated texts / bytes gzip-compressed (zlib,
  level 6). Repetitive text compresses well: higher = less diverse (human corpora ~2.5-3).
* ``distinct_1..4``: distinct word n-grams / all word n-grams (lowercased words): lower =
  more reuse of the same phrases.
* ``mean_similarity``: mean pairwise cosine of the documents' unit embeddings, computed
  exactly in O(n d) as (|sum|^2 - n) / (n (n - 1)).
* ``vendi``: the Vendi score (Friedman & Dieng 2023), exp of the Shannon entropy of the
  eigenvalues of K/n with K the cosine-similarity matrix: the effective number of distinct
  documents (1 when all are the same, n when all are orthogonal). The non-zero eigenvalues
  of X X^T / n equal those of X^T X / n, so it costs O(n d^2), not O(n^3).

Lexical measures use at most ``sample`` (500) documents per node (a deterministic sample by id
hash) so their cost is bounded; embedding measures use every document. ``embedding_map``
projects embeddings to 2-D (PCA by SVD) for the report's map. Pure functions; no I/O.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Sequence

import numpy as np
import polars as pl

from builder.diversity import ALL_NODE, expand_nodes

_WORD = re.compile(r"\w+", re.U)
NGRAMS = (1, 2, 3, 4)
METRIC_COLUMNS = (
    "docs",
    "compression_ratio",
    *(f"distinct_{n}" for n in NGRAMS),
    "mean_similarity",
    "vendi",
)


def compression_ratio(texts: Sequence[str]) -> float | None:
    """Raw / compressed size of the texts joined by newlines (None: no text)."""
    data = "\n".join(t or "" for t in texts).encode("utf-8")
    if not data:
        return None
    return round(len(data) / len(zlib.compress(data, 6)), 4)


def _word_ids(texts: Sequence[str], vocab: dict[str, int]) -> list[np.ndarray]:
    return [
        np.fromiter(
            (vocab.setdefault(w, len(vocab)) for w in _WORD.findall((t or "").lower())), np.int64
        )
        for t in texts
    ]


def _distinct(ids: list[np.ndarray], n: int) -> float | None:
    """Distinct / all n-grams over documents given as word-id arrays (hashing in numpy)."""
    grams = []
    for a in ids:
        if len(a) < n:
            continue
        h = np.zeros(len(a) - n + 1, dtype=np.uint64)
        for j in range(n):
            h = h * np.uint64(1_000_003) + a[j : len(a) - n + 1 + j].astype(np.uint64)
        grams.append(h)
    if not grams:
        return None
    allg = np.concatenate(grams)
    return round(len(np.unique(allg)) / len(allg), 4)


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct word n-grams / all word n-grams over the texts (None: no n-gram)."""
    return _distinct(_word_ids(texts, {}), n)


def mean_similarity(x: np.ndarray) -> float | None:
    """Mean cosine over all pairs of distinct rows of unit vectors ``x`` (None: < 2 rows)."""
    n = x.shape[0]
    if n < 2:
        return None
    s = x.sum(axis=0, dtype=np.float64)
    self_sims = float(np.einsum("ij,ij->", x, x, dtype=np.float64))
    return round((float(s @ s) - self_sims) / (n * (n - 1)), 4)


def vendi_score(x: np.ndarray) -> float | None:
    """Vendi score of unit vectors ``x``: the effective number of distinct documents."""
    n = x.shape[0]
    if n == 0:
        return None
    xf = x.astype(np.float64)
    eig = np.linalg.eigvalsh(xf.T @ xf / n)
    eig = eig[eig > 1e-12]
    eig = eig / eig.sum()
    return round(float(np.exp(-(eig * np.log(eig)).sum())), 4)


def _sample(ids: list[str], limit: int) -> list[int]:
    if len(ids) <= limit:
        return list(range(len(ids)))
    keyed = sorted(
        range(len(ids)), key=lambda i: hashlib.blake2b(ids[i].encode(), digest_size=8).digest()
    )
    return sorted(keyed[:limit])


def metrics_of(texts: list[str], ids: list[str], x: np.ndarray | None, *, sample: int) -> dict:
    """Every diversity metric of one group of documents."""
    picked = _sample(ids, sample)
    some = [texts[i] for i in picked]
    out: dict = {"docs": len(texts), "compression_ratio": compression_ratio(some)}
    ids_ = _word_ids(some, {})
    for n in NGRAMS:
        out[f"distinct_{n}"] = _distinct(ids_, n)
    out["mean_similarity"] = mean_similarity(x) if x is not None else None
    out["vendi"] = vendi_score(x) if x is not None else None
    return out


def node_diversity(
    frame: pl.DataFrame,
    embeddings: np.ndarray | None = None,
    *,
    text_column: str = "text",
    id_column: str = "id",
    sample: int = 500,
    min_docs: int = 2,
) -> pl.DataFrame:
    """``METRIC_COLUMNS`` per taxonomy node (every ancestor of each ``taxonomy_path``) and for
    the corpus (node ``(all)``). ``embeddings`` rows follow ``frame``'s rows."""
    base = frame.select(
        pl.col(id_column).cast(pl.String).alias("_id"),
        *([pl.col("taxonomy_path")] if "taxonomy_path" in frame.columns else []),
    ).with_row_index("_row")
    expanded = expand_nodes(base).select("node", "depth", "_row")
    texts = frame[text_column].fill_null("").to_list()
    ids = base["_id"].to_list()
    rows = []
    for (node, depth), group in expanded.group_by(["node", "depth"], maintain_order=True):
        idx = group["_row"].to_numpy()
        if len(idx) < min_docs and node != ALL_NODE:
            continue
        x = embeddings[idx] if embeddings is not None else None
        m = metrics_of([texts[i] for i in idx], [ids[i] for i in idx], x, sample=sample)
        rows.append({"node": node, "depth": int(depth), **m})
    schema = {"node": pl.String, "depth": pl.Int32, "docs": pl.Int64}
    schema.update({c: pl.Float64 for c in METRIC_COLUMNS if c != "docs"})
    return pl.DataFrame(rows, schema=schema).sort("depth", "node")


def embedding_map(
    embeddings: np.ndarray, labels: Sequence[str], ids: Sequence[str], *, limit: int = 5000
) -> pl.DataFrame:
    """2-D PCA coordinates (x, y) of at most ``limit`` documents with their label and id."""
    ids = list(ids)
    picked = np.array(_sample(ids, limit), dtype=np.int64)
    if len(picked) == 0:
        return pl.DataFrame(
            schema={"id": pl.String, "label": pl.String, "x": pl.Float32, "y": pl.Float32}
        )
    x = embeddings[picked].astype(np.float64)
    x = x - x.mean(axis=0)
    if len(picked) >= 2:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        xy = x @ vt[:2].T
        if xy.shape[1] < 2:
            xy = np.hstack([xy, np.zeros((len(picked), 1))])
    else:
        xy = np.zeros((1, 2))
    return pl.DataFrame(
        {
            "id": [ids[i] for i in picked],
            "label": [str(labels[i]) for i in picked],
            "x": xy[:, 0].astype(np.float32),
            "y": xy[:, 1].astype(np.float32),
        }
    )
