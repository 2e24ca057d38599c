"""Dedup's plan as first written, over every row (``builder.dedup.plan.make_plan`` before it
named only the rows of duplicate groups): the reference the sparse plan must equal. It
shares with the plan only the last steps (``best_partners`` and the tables' formatting),
not which rows are ranked, grouped or named."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from builder.dedup.lsh import pair_jaccard
from builder.dedup.plan import (
    FindPairs,
    Plan,
    RowArrays,
    _empty_clusters,
    _empty_removed,
    best_partners,
    cluster_tables,
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
    """``make_plan`` given every row's id and verified flag (ranked all together)."""
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
    best_partner, best_j = best_partners(edges, edge_j, rank, n)
    ex = exact_rep[members]
    matched = np.where(
        is_rep,
        -1,
        np.where(same_text, m_rep, np.where(ex != members, ex, best_partner[members])),
    )
    matched_j = np.where(
        is_rep, np.nan, np.where(same_text | (ex != members), 1.0, best_j[members])
    )
    # A representative's kind is its cluster's: exact when every member has its text.
    lab_m = label[members]
    near_labels = np.unique(lab_m[~same_text])
    rep_kind = np.where(np.isin(lab_m, near_labels), "near", "exact")
    kind = np.where(is_rep, rep_kind, np.where(same_text, "exact", "near"))
    clusters, rep_cluster, removed = cluster_tables(
        {
            "id": ids.gather(members),
            "representative_id": ids.gather(m_rep),
            "kind": pl.Series(kind, dtype=pl.String),
            "removed": ~is_rep,
            "cluster_size": sizes[label[members]].astype(np.int64),
            "jaccard": np.round(jac_rep, 4),
            "matched_id": ids.gather(np.where(matched < 0, 0, matched)),
            "matched_jaccard": np.round(matched_j, 4),
            "_row": members,
            "_order": rank[m_rep] * (n + 1) + np.where(is_rep, -1, rank[members]),
        }
    )
    return Plan(keep, clusters, removed, rep_cluster, n_candidates, len(edges))
