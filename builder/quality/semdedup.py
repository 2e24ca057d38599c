"""Semantic near-duplicates (SemDeDup-style), after exact and MinHash dedup.

MinHash finds documents that share word 5-grams; two sections that say the same thing in
other words pass it. Here documents whose embeddings have cosine >= ``threshold`` are
grouped:

1. **Cluster** the unit embeddings with k-means (numpy, seeded k-means++ start, a few Lloyd
   iterations, assignments computed in row blocks), about ``cluster_size`` documents per
   cluster, so comparisons stay inside a cluster (SemDeDup, Abbas et al. 2023).
2. **Compare within each cluster** in row blocks (memory bounded by block x cluster size,
   never n x n), keep pairs at or above the threshold, and join them into groups
   (``scipy.sparse.csgraph.connected_components``).
3. **Representative** of a group: the same rule as MinHash dedup (``verified`` first, then
   the longest text, then the smallest id); the others are marked ``removed`` with their
   group, representative, cosine to the representative and the row they matched.

Pure functions over arrays and frames of one corpus (or partition); no I/O. The result has
``builder.dedup.CLUSTER_COLUMNS`` with ``kind = "semantic"`` and cosines in the Jaccard
columns, so the report and the card treat it like a MinHash cluster table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

KIND = "semantic"
REASON = "semantic_dup"
#: Cosines computed at once within a cluster (a block of rows against all its members):
#: 4M float32 = 16 MB, whatever the cluster's size. Rows per block were fixed (2,048), so a
#: cluster of 20k documents held 160 MB of cosines per thread.
_BLOCK_CELLS = 4 << 20


def kmeans(
    x: np.ndarray, k: int, *, iterations: int = 10, seed: int = 0, block: int = 8192
) -> np.ndarray:
    """Cluster label of each row of ``x`` (unit vectors; cosine = dot), k-means++ start."""
    return kmeans_fit(x, k, iterations=iterations, seed=seed, block=block)[0]


def kmeans_fit(
    x: np.ndarray, k: int, *, iterations: int = 10, seed: int = 0, block: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """``kmeans``'s labels and the centres they were assigned to (``assign`` puts other
    rows in the same clusters)."""
    n = x.shape[0]
    k = max(1, min(k, n))
    if k == 1:
        return np.zeros(n, dtype=np.int64), _unit(x.sum(axis=0, keepdims=True))
    rng = np.random.default_rng(seed)
    centres = np.empty((k, x.shape[1]), dtype=np.float32)
    centres[0] = x[rng.integers(n)]
    best = np.full(n, np.inf, dtype=np.float64)
    for j in range(1, k):  # k-means++ (distance = 1 - cosine)
        best = np.minimum(best, np.maximum(0.0, 1.0 - x @ centres[j - 1]))
        total = best.sum()
        pick = rng.integers(n) if total <= 0 else rng.choice(n, p=best / total)
        centres[j] = x[pick]
    labels = np.zeros(n, dtype=np.int64)
    used = centres
    for _ in range(iterations):
        used = centres
        labels = assign(x, centres, block=block)
        sums, counts = _cluster_sums(x, labels, k)
        empty = counts == 0
        sums[empty] = x[rng.integers(n, size=int(empty.sum()))]
        new = _unit(sums)
        if np.allclose(new, centres, atol=1e-6):
            break
        centres = new.astype(np.float32)
    return labels, used


def _cluster_sums(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster row sums and counts: the same float32 sums, added in the same row order,
    as ``np.add.at(sums, labels, x)``, at a fraction of its cost (``add.at`` was half of
    semdedup's CPU). Step r adds every cluster's r-th row (in row order) at once: one
    vectorised add per rank instead of one Python-level scatter per row."""
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros((k, x.shape[1]), dtype=x.dtype)
    by_label = np.argsort(labels, kind="stable")
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(labels), dtype=np.int64)
    rank[by_label] = np.arange(len(labels)) - starts[labels[by_label]]
    by_rank = np.argsort(rank, kind="stable")
    per_rank = np.bincount(rank)
    at = 0
    for size in per_rank.tolist():
        rows = by_rank[at : at + size]
        sums[labels[rows]] += x[rows]  # labels are distinct within one rank
        at += size
    return sums, counts


def assign(x: np.ndarray, centres: np.ndarray, *, block: int = 8192) -> np.ndarray:
    """The nearest centre (largest cosine) of each row of ``x``, in row blocks of at most
    ``block`` rows and ``_BLOCK_CELLS`` cosines: the centres grow with the corpus (one per
    ``cluster_size`` documents, up to the k-means sample), and a fixed 8,192 rows held 33 MB
    of cosines at 1,000 centres, 1 GB at 30,000."""
    labels = np.zeros(x.shape[0], dtype=np.int64)
    block = max(1, min(block, _BLOCK_CELLS // max(1, len(centres))))
    for s in range(0, x.shape[0], block):
        labels[s : s + block] = np.argmax(x[s : s + block] @ centres.T, axis=1)
    return labels


def _unit(sums: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)


@dataclass
class SemanticResult:
    """The clusters table (``CLUSTER_COLUMNS``) and counts of one semantic dedup pass."""

    clusters: pl.DataFrame
    groups: int
    removed: int
    kmeans_clusters: int


def _pairs(x: np.ndarray, members: np.ndarray, threshold: float):
    """(i, j, cosine) with i < j, both in ``members``, cosine >= threshold (row blocks)."""
    sub = x[members]
    out_i, out_j, out_s = [], [], []
    block = max(1, _BLOCK_CELLS // len(members))
    for s in range(0, len(members), block):
        sims = sub[s : s + block] @ sub.T
        a, b = np.nonzero(sims >= threshold)
        a_global = a + s
        keep = a_global < b
        out_i.append(members[a_global[keep]])
        out_j.append(members[b[keep]])
        out_s.append(sims[a[keep], b[keep]])
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


CLUSTERS_SCHEMA = {
    "id": pl.String,
    "cluster_id": pl.String,
    "representative_id": pl.String,
    "kind": pl.String,
    "removed": pl.Boolean,
    "cluster_size": pl.Int64,
    "jaccard": pl.Float64,
    "matched_id": pl.String,
    "matched_jaccard": pl.Float64,
}


def semantic_clusters(
    ids: list[str],
    embeddings: np.ndarray,
    *,
    threshold: float = 0.95,
    cluster_size: int = 1000,
    lengths: np.ndarray | None = None,
    verified: list[bool | None] | None = None,
    seed: int = 0,
) -> SemanticResult:
    """Group documents whose embeddings have cosine >= ``threshold`` (module docstring)."""
    n = len(ids)
    if n < 2:
        return clusters_result([], 0, min(n, 1))
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    k = max(1, -(-n // cluster_size))
    labels = kmeans(x, k, seed=seed)
    rows, groups = group_rows(ids, x, labels, threshold, lengths=lengths, verified=verified)
    return clusters_result(rows, groups, k)


def clusters_result(rows: list[dict], groups: int, kmeans_clusters: int) -> SemanticResult:
    """The ``SemanticResult`` of the rows ``group_rows`` returned (for one or many calls)."""
    clusters = pl.DataFrame(rows, schema=CLUSTERS_SCHEMA).sort("cluster_id", "removed", "id")
    removed = int(clusters["removed"].sum()) if clusters.height else 0
    return SemanticResult(clusters, groups, removed, kmeans_clusters)


def group_rows(
    ids: list[str],
    x: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    *,
    lengths: np.ndarray | None = None,
    verified: list[bool | None] | None = None,
) -> tuple[list[dict], int]:
    """The clusters table's rows of documents whose cosine is >= ``threshold`` within each
    k-means cluster of ``labels`` (pairs never cross clusters, so any set of whole clusters
    can be grouped on its own), and the number of groups."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(ids)
    ii, jj, ss = [], [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) > 1:
            i, j, s = _pairs(x, members, threshold)
            ii.append(i)
            jj.append(j)
            ss.append(s)
    i = np.concatenate(ii) if ii else np.zeros(0, dtype=np.int64)
    j = np.concatenate(jj) if jj else np.zeros(0, dtype=np.int64)
    if len(i) == 0:
        return [], 0
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp)
    # representative order: verified first, then longest text, then smallest id
    lengths = np.zeros(n, dtype=np.int64) if lengths is None else np.asarray(lengths)
    ver = np.array([0 if v is True else 1 for v in (verified or [None] * n)], dtype=np.int8)
    order = (
        pl.DataFrame({"row": np.arange(n), "v": ver, "len": -lengths, "id": ids})
        .sort(["v", "len", "id"])["row"]
        .to_numpy()
    )
    rep_of: dict[int, int] = {}
    for row in order:
        rep_of.setdefault(int(comp[row]), int(row))
    best_match: dict[int, tuple[int, float]] = {}
    for a, b, s in zip(i.tolist(), j.tolist(), np.concatenate(ss).tolist(), strict=True):
        for u, v in ((a, b), (b, a)):
            if s > best_match.get(u, (-1, -2.0))[1]:
                best_match[u] = (v, s)
    rows = []
    for row in np.flatnonzero(sizes[comp] > 1).tolist():
        c = int(comp[row])
        rep = rep_of[c]
        match, msim = best_match.get(row, (rep, 1.0))
        rows.append(
            {
                "id": ids[row],
                "cluster_id": f"sem-{ids[rep]}",
                "representative_id": ids[rep],
                "kind": KIND,
                "removed": row != rep,
                "cluster_size": int(sizes[c]),
                "jaccard": round(float(x[row] @ x[rep]), 4),
                "matched_id": ids[match],
                "matched_jaccard": round(float(msim), 4),
            }
        )
    return rows, int((sizes > 1).sum())


def removal_records(clusters: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """Rejection records (id, stage, reason, detail, cluster and representative) of the
    removed members of a semantic clusters table."""
    return clusters.filter(pl.col("removed")).select(
        "id",
        pl.lit("dedup").alias("stage"),
        pl.lit(REASON).alias("reason"),
        pl.format(
            "cosine {} >= {} to {}",
            pl.col("jaccard"),
            pl.lit(threshold),
            pl.col("representative_id"),
        ).alias("detail"),
        "cluster_id",
        "representative_id",
        pl.col("kind").alias("dup_kind"),
        pl.col("jaccard").alias("similarity"),
    )
