"""Dedup's plan as first written, over every row (``builder.dedup.plan.make_plan`` before it
named only the rows of duplicate groups): the reference the sparse plan must equal."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import xxhash

from builder.dedup.lsh import pair_jaccard
from builder.dedup.plan import (
    FindPairs,
    Plan,
    RowArrays,
    _empty_clusters,
    _empty_removed,
    _removed_records,
    components,
    rank_rows,
    verified_mask,
)
from builder.settings.dedup import DedupSettings


def _run_starts(new: np.ndarray) -> np.ndarray:
    """For each position, the index of the first position of its run (new marks run starts)."""
    idx = np.where(new, np.arange(len(new)), 0)
    return np.maximum.accumulate(idx)


def _exact_reps(exact: np.ndarray, rank: np.ndarray) -> np.ndarray:
    n = len(rank)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((rank, exact[:, 1], exact[:, 0]))
    k = exact[order]
    new = np.empty(n, dtype=bool)
    new[0] = True
    new[1:] = (k[1:] != k[:-1]).any(axis=1)
    reps = np.empty(n, dtype=np.int64)
    reps[order] = order[_run_starts(new)]
    return reps


def dense_plan(
    rows: RowArrays,
    ids: pl.Series,
    verified: pl.Series | None,
    signatures: Any,
    settings: DedupSettings,
    find_pairs: FindPairs,
) -> Plan:
    """Decide clusters, representatives and removals from the per-row arrays.

    ``find_pairs(candidates)`` returns the candidate pairs among the rows marked in the
    boolean mask (exact representatives with words), sorted by (a, b), with their estimated
    Jaccard; ``signatures[rows]`` gives signature rows (an array or a ``SignatureStore``).
    """
    n = rows.n
    arange = np.arange(n, dtype=np.int64)
    rank = rank_rows(ids, rows.lengths, verified)
    exact_rep = _exact_reps(rows.exact, rank) if settings.exact else arange.copy()

    edges = np.zeros((0, 2), dtype=np.int64)
    edge_j = np.zeros(0, dtype=np.float64)
    n_candidates = 0
    if settings.near:
        cand = (exact_rep == arange) & (rows.shingles > 0)
        pairs, jac = find_pairs(cand)
        n_candidates = len(pairs)
        if n_candidates:
            ok = verified_mask(jac, settings)
            edges, edge_j = pairs[ok], jac[ok]

    labels = components(n, edges)
    label = labels[exact_rep]

    sizes = np.bincount(label, minlength=n)
    members = np.flatnonzero(sizes[label] >= 2)
    keep = np.ones(n, dtype=bool)
    if len(members) == 0:
        return Plan(
            keep,
            _empty_clusters(ids.dtype),
            _empty_removed(ids.dtype),
            pl.DataFrame(
                {"row": [], "cluster_id": []}, schema={"row": pl.Int64, "cluster_id": pl.String}
            ),
            n_candidates,
            len(edges),
        )

    # Representative of each cluster: the member with the lowest rank.
    order = members[np.lexsort((rank[members], label[members]))]
    lab_sorted = label[order]
    first = np.empty(len(order), dtype=bool)
    first[0] = True
    first[1:] = lab_sorted[1:] != lab_sorted[:-1]
    rep_sorted = order[_run_starts(first)]
    rep = np.empty(n, dtype=np.int64)
    rep[order] = rep_sorted
    m_rep = rep[members]
    keep[members] = members == m_rep

    same_text = (rows.exact[members] == rows.exact[m_rep]).all(axis=1)
    is_rep = members == m_rep
    jac_rep = np.ones(len(members), dtype=np.float64)
    need_j = ~same_text
    if need_j.any():
        jac_rep[need_j] = pair_jaccard(
            signatures, np.stack([members[need_j], m_rep[need_j]], axis=1)
        )

    # The row each member was matched to: its exact twin, else its best verified edge.
    best_partner = np.full(n, -1, dtype=np.int64)
    best_j = np.zeros(n, dtype=np.float64)
    if len(edges):
        u = np.concatenate([edges[:, 0], edges[:, 1]])
        v = np.concatenate([edges[:, 1], edges[:, 0]])
        j = np.concatenate([edge_j, edge_j])
        o = np.lexsort((rank[v], -j, u))
        u_s = u[o]
        f = np.empty(len(u_s), dtype=bool)
        f[0] = True
        f[1:] = u_s[1:] != u_s[:-1]
        best_partner[u_s[f]] = v[o][f]
        best_j[u_s[f]] = j[o][f]
    ex = exact_rep[members]
    matched = np.where(
        is_rep,
        -1,
        np.where(same_text, m_rep, np.where(ex != members, ex, best_partner[members])),
    )
    matched_j = np.where(
        is_rep, np.nan, np.where(same_text | (ex != members), 1.0, best_j[members])
    )

    cluster_sizes = sizes[label[members]]
    rep_ids = ids.gather(m_rep)
    cluster_ids = pl.Series(
        "cluster_id",
        [f"dup-{xxhash.xxh3_64_hexdigest(str(v).encode())}" for v in rep_ids.to_list()],
        dtype=pl.String,
    )
    member_kind = np.where(same_text, "exact", "near")
    # A representative's kind is its cluster's: exact when every member has its text.
    lab_m = label[members]
    near_labels = np.unique(lab_m[~same_text])
    rep_kind = np.where(np.isin(lab_m, near_labels), "near", "exact")
    kind = np.where(is_rep, rep_kind, member_kind)
    matched_ids = ids.gather(np.where(matched < 0, 0, matched))

    clusters = pl.DataFrame(
        {
            "id": ids.gather(members),
            "cluster_id": cluster_ids,
            "representative_id": rep_ids,
            "kind": pl.Series(kind, dtype=pl.String),
            "removed": ~is_rep,
            "cluster_size": cluster_sizes.astype(np.int64),
            "jaccard": np.round(jac_rep, 4),
            "matched_id": matched_ids,
            "matched_jaccard": np.round(matched_j, 4),
            "_row": members,
            "_order": rank[m_rep] * (n + 1) + np.where(is_rep, -1, rank[members]),
        }
    ).with_columns(
        pl.when(pl.col("removed")).then(pl.col("matched_id")).otherwise(None).alias("matched_id"),
        pl.when(pl.col("removed"))
        .then(pl.col("matched_jaccard"))
        .otherwise(None)
        .alias("matched_jaccard"),
    )
    clusters = clusters.sort("_order")
    rep_cluster = clusters.filter(~pl.col("removed")).select(
        pl.col("_row").alias("row"), "cluster_id"
    )
    removed = _removed_records(clusters.filter(pl.col("removed")))
    clusters = clusters.drop("_row", "_order")
    return Plan(keep, clusters, removed, rep_cluster, n_candidates, len(edges))
