"""Deciding clusters from per-row arrays: representatives, removals, provenance.

Pure logic over numpy/Polars arrays (no I/O): the exact groups (equal exact keys), the near
groups (verified candidate pairs joined by union-find), each cluster's representative (first
by ``verified``, then longest text, then smallest id) and the records of what was removed.
Candidate pairs come from a callable, so the band grouping can run anywhere (in memory, in
bucket tasks over files, on Ray) without this module knowing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import xxhash

from builder.dedup.lsh import pair_jaccard
from builder.errors import InputError
from builder.settings.dedup import DedupSettings

#: ``candidates mask -> (pairs (m, 2) sorted by (a, b), estimated Jaccard (m,))``
FindPairs = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class RowArrays:
    """What the plan needs per row, in global row order (small: ~40 bytes a row)."""

    exact: np.ndarray  # (n, 2) uint64 exact keys
    lengths: np.ndarray  # int64 characters
    shingles: np.ndarray  # int64 shingles (0: no words)

    @property
    def n(self) -> int:
        return len(self.lengths)


def verified_mask(jac: np.ndarray, settings: DedupSettings) -> np.ndarray:
    """Which candidate pairs reach the threshold (counted in equal slots, no float edge)."""
    need = int(np.ceil(settings.threshold * settings.num_perm - 1e-9))
    return np.rint(jac * settings.num_perm) >= need


def generated_ids(text_hash: np.ndarray) -> pl.Series:
    """Stable ids from the text: 16 hex digits of xxh3-64, '-k' for the k-th repeat."""
    hexes = pl.Series("h", [f"{int(h):016x}" for h in text_hash.tolist()], dtype=pl.String)
    frame = pl.DataFrame({"h": hexes}).with_columns(
        k=pl.int_range(pl.len()).over("h"),
    )
    ids = frame.select(
        pl.when(pl.col("k") == 0)
        .then(pl.col("h"))
        .otherwise(pl.col("h") + "-" + pl.col("k").cast(pl.String))
    ).to_series()
    return ids


def check_ids(ids: pl.Series, *, column: str, file: str | os.PathLike[str] | None) -> None:
    """Ids must be present and unique, or clusters could not name their members."""
    nulls = ids.null_count()
    if nulls:
        first = int(ids.is_null().arg_true()[0])
        raise InputError(
            f"id column '{column}' is empty in {nulls} row(s), first at row {first}",
            file=file,
            hint="fill the ids, or pass --id-column of another column (a missing id column "
            "gets ids from the text)",
        )
    dup = ids.is_duplicated()
    if dup.any():
        rows = dup.arg_true()
        value = ids[int(rows[0])]
        raise InputError(
            f"id column '{column}' has {int(dup.sum())} rows with repeated ids "
            f"(e.g. {value!r} at rows {int(rows[0])} and {int(rows[1])})",
            file=file,
            hint="ids must be unique; drop the column to get ids from the text",
        )


def rank_rows(ids: pl.Series, lengths: np.ndarray, verified: pl.Series | None) -> np.ndarray:
    """Position of each row in the representative order (lower = preferred)."""
    n = len(ids)
    if verified is not None and verified.dtype == pl.Boolean:
        vrank = (~verified.fill_null(False)).cast(pl.Int8)
    else:
        vrank = pl.Series("v", np.zeros(n, dtype=np.int8))
    frame = pl.DataFrame(
        {"row": np.arange(n, dtype=np.int64), "v": vrank, "len": lengths, "id": ids}
    )
    order = frame.sort(["v", "len", "id", "row"], descending=[False, True, False, False])[
        "row"
    ].to_numpy()
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n, dtype=np.int64)
    return rank


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


@dataclass
class Plan:
    keep: np.ndarray
    clusters: pl.DataFrame
    removed: pl.DataFrame
    rep_cluster: pl.DataFrame  # row, cluster_id of kept representatives
    candidate_pairs: int
    verified_pairs: int


def components(n: int, edges: np.ndarray) -> np.ndarray:
    """Connected components of the graph on ``n`` nodes with ``edges`` ((m, 2) rows): each
    node's label is the smallest node of its component.

    Union-find in numpy (hook every edge's larger root under the smaller, then pointer
    jumping until every node points at its root; repeat until no edge joins two roots):
    a few vector passes for the few verified edges a corpus has, and no scipy to import.
    """
    labels = np.arange(n, dtype=np.int64)
    if len(edges) == 0:
        return labels
    u = edges[:, 0].astype(np.int64)
    v = edges[:, 1].astype(np.int64)
    while True:
        lu, lv = labels[u], labels[v]
        differ = lu != lv
        if not differ.any():
            return labels
        lo = np.minimum(lu, lv)[differ]
        np.minimum.at(labels, lu[differ], lo)
        np.minimum.at(labels, lv[differ], lo)
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped


def make_plan(
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


def _removed_records(members: pl.DataFrame) -> pl.DataFrame:
    reason = (
        pl.when(pl.col("kind") == "exact")
        .then(pl.lit("exact duplicate"))
        .otherwise(pl.lit("near duplicate"))
    )
    detail = (
        pl.when(pl.col("kind") == "exact")
        .then(
            pl.format(
                "same normalised text as {} (cluster {}, {} members)",
                pl.col("representative_id").cast(pl.String),
                "cluster_id",
                "cluster_size",
            )
        )
        .otherwise(
            pl.format(
                "estimated Jaccard {} with representative {}; matched {} at {} "
                "(cluster {}, {} members)",
                pl.col("jaccard").round(3).cast(pl.String),
                pl.col("representative_id").cast(pl.String),
                pl.col("matched_id").cast(pl.String),
                pl.col("matched_jaccard").round(3).cast(pl.String),
                "cluster_id",
                "cluster_size",
            )
        )
    )
    return members.select(
        "id",
        pl.lit("dedup").alias("stage"),
        reason.alias("reason"),
        detail.alias("detail"),
        "cluster_id",
        "representative_id",
        "kind",
        "jaccard",
    )


def _empty_clusters(id_dtype: pl.DataType) -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "id": id_dtype,
            "cluster_id": pl.String,
            "representative_id": id_dtype,
            "kind": pl.String,
            "removed": pl.Boolean,
            "cluster_size": pl.Int64,
            "jaccard": pl.Float64,
            "matched_id": id_dtype,
            "matched_jaccard": pl.Float64,
        }
    )


def _empty_removed(id_dtype: pl.DataType) -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "id": id_dtype,
            "stage": pl.String,
            "reason": pl.String,
            "detail": pl.String,
            "cluster_id": pl.String,
            "representative_id": id_dtype,
            "kind": pl.String,
            "jaccard": pl.Float64,
        }
    )
