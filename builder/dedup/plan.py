"""Deciding clusters from the rows' facts: representatives, removals, provenance.

Logic over numpy/Polars arrays: the exact groups (equal exact keys), the near
groups (verified candidate pairs joined by union-find), each cluster's representative (first
by ``verified``, then longest text, then smallest id) and the records of what was removed.
Candidate pairs come from a callable, so the band grouping can run anywhere (in memory, in
bucket tasks over files, on Ray) without this module knowing; the rows' keys and lengths
come from a ``RowFacts`` (arrays in memory, or the signature pieces' files).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import polars as pl
import xxhash

from builder.dedup.keygroups import EqualKeys
from builder.dedup.lsh import pair_jaccard
from builder.errors import InputError
from builder.settings.dedup import DedupSettings

#: ``candidates mask -> (pairs (m, 2) sorted by (a, b), estimated Jaccard (m,))``
FindPairs = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class RowFacts(Protocol):
    """What the plan needs of the rows besides their names: one flag per row, the groups of
    equal exact keys, and the keys and lengths of the few rows it asks for. Rows held in
    files answer from them (``signatures.PieceRows``), so nothing else is held per row."""

    @property
    def n(self) -> int: ...

    def words(self) -> np.ndarray:
        """A boolean per row: the text has words (it can be a near duplicate)."""
        ...

    def exact_groups(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows whose exact key another row shares (ascending), a group number each."""
        ...

    def at(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The exact keys ((k, 2) uint64) and lengths (characters) of ``rows``."""
        ...


@dataclass
class RowArrays:
    """``RowFacts`` of arrays held in memory, in row order (tests, small tables)."""

    exact: np.ndarray  # (n, 2) uint64 exact keys
    lengths: np.ndarray  # int64 characters
    shingles: np.ndarray  # int64 shingles (0: no words)

    @property
    def n(self) -> int:
        return len(self.lengths)

    def words(self) -> np.ndarray:
        return np.asarray(self.shingles) > 0

    def exact_groups(self) -> tuple[np.ndarray, np.ndarray]:
        keys = EqualKeys(2, budget_rows=max(1, self.n))
        keys.add(self.exact)
        return keys.groups()

    def at(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.exact[rows], self.lengths[rows]


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


#: ``rows (sorted, unique) -> (their ids, their verified flags or None)``: what the plan asks
#: of the rows it names. A table on disk answers with a pass over its columns
#: (``rowids.take``): only rows in duplicate groups are ever asked for.
RowNames = Callable[[np.ndarray], tuple[pl.Series, "pl.Series | None"]]


def names_of(ids: pl.Series, verified: pl.Series | None) -> RowNames:
    """``RowNames`` of columns held in memory."""
    return lambda rows: (ids.gather(rows), None if verified is None else verified.gather(rows))


def rank_rows(ids: pl.Series, lengths: np.ndarray, verified: pl.Series | None) -> np.ndarray:
    """Position of each row in the representative order (lower = preferred): verified
    first, then the longest text, then the smallest id, then the first row. Any subset of
    rows ranked on its own keeps their order (rows are numbered by position in the given
    columns)."""
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


def _first_of_each(groups: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each position, the position with the lowest rank among those of its group."""
    order = np.lexsort((rank, groups))
    g = groups[order]
    first = np.ones(len(g), dtype=bool)
    first[1:] = g[1:] != g[:-1]
    best = np.empty(len(g), dtype=np.int64)
    best[order] = order[_run_starts(first)]
    return best


@dataclass
class Plan:
    keep: np.ndarray
    clusters: pl.DataFrame
    removed: pl.DataFrame
    rep_cluster: pl.DataFrame  # row, cluster_id of kept representatives
    candidate_pairs: int
    verified_pairs: int
    #: The removed rows (sorted) and whether each is an exact duplicate (else near).
    removed_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    removed_exact: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


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
    rows: RowFacts,
    names: RowNames,
    signatures: Any,
    settings: DedupSettings,
    find_pairs: FindPairs,
) -> Plan:
    """Decide clusters, representatives and removals from the rows' facts.

    ``find_pairs(candidates)`` returns the candidate pairs among the rows marked in the
    boolean mask (exact representatives with words), sorted by (a, b), with their estimated
    Jaccard; ``signatures[rows]`` gives signature rows (an array or a ``SignatureStore``);
    ``names`` gives the ids and verified flags of the rows in duplicate groups, the only
    rows whose representative order matters; ``rows`` gives their exact keys and lengths
    likewise (``RowFacts.at``). Besides a boolean per row (``keep``, the candidates, the
    words flags), every array here holds only the rows of duplicate groups ("members",
    numbered 0..m-1 in row order): memory follows the duplicates, not the corpus.
    """
    n = rows.n
    if settings.exact:
        ex_rows, ex_group = rows.exact_groups()
    else:
        ex_rows, ex_group = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ex_ids, ex_ver = names(ex_rows)
    ex_best = _first_of_each(ex_group, rank_rows(ex_ids, rows.at(ex_rows)[1], ex_ver))
    ex_rep = ex_rows[ex_best]  # each grouped row's exact representative (a row)
    del ex_ids, ex_ver

    edges = np.zeros((0, 2), dtype=np.int64)
    edge_j = np.zeros(0, dtype=np.float64)
    n_candidates = 0
    if settings.near:
        cand = rows.words()
        cand[ex_rows[ex_rep != ex_rows]] = False
        pairs, jac = find_pairs(cand)
        del cand
        n_candidates = len(pairs)
        if n_candidates:
            ok = verified_mask(jac, settings)
            edges, edge_j = pairs[ok].astype(np.int64), jac[ok]

    keep = np.ones(n, dtype=bool)
    members = np.union1d(ex_rows, edges.ravel()).astype(np.int64)
    m = len(members)
    if m == 0:
        id_dtype = names(members)[0].dtype
        return Plan(
            keep,
            _empty_clusters(id_dtype),
            _empty_removed(id_dtype),
            pl.DataFrame(
                {"row": [], "cluster_id": []}, schema={"row": pl.Int64, "cluster_id": pl.String}
            ),
            n_candidates,
            len(edges),
        )
    at = np.arange(m, dtype=np.int64)
    ex = at.copy()  # each member's exact representative, as a member
    ex[np.searchsorted(members, ex_rows)] = np.searchsorted(members, ex_rep)
    near = np.searchsorted(members, edges)
    # A member's cluster: its exact twins and everything joined to them by verified edges.
    label = components(m, np.concatenate([near, np.stack([at, ex], axis=1)]))
    sizes = np.bincount(label, minlength=m)
    ids, verified = names(members)
    m_exact, m_lengths = rows.at(members)
    rank = rank_rows(ids, m_lengths, verified)
    rep = _first_of_each(label, rank)  # the member with the lowest rank of each cluster
    is_rep = at == rep
    keep[members] = is_rep

    same_text = (m_exact == m_exact[rep]).all(axis=1)
    del m_exact, m_lengths
    jac_rep = np.ones(m, dtype=np.float64)
    need_j = ~same_text
    if need_j.any():
        jac_rep[need_j] = pair_jaccard(
            signatures, np.stack([members[need_j], members[rep[need_j]]], axis=1)
        )

    # The member each member was matched to: its exact twin, else its best verified edge.
    best_partner, best_j = best_partners(near, edge_j, rank, m)
    matched = np.where(is_rep, -1, np.where(same_text, rep, np.where(ex != at, ex, best_partner)))
    matched_j = np.where(is_rep, np.nan, np.where(same_text | (ex != at), 1.0, best_j))
    # A representative's kind is its cluster's: exact when every member has its text.
    near_labels = np.unique(label[~same_text])
    rep_kind = np.where(np.isin(label, near_labels), "near", "exact")
    clusters, rep_cluster, removed = cluster_tables(
        {
            "id": ids,
            "representative_id": ids.gather(rep),
            "kind": pl.Series(
                np.where(is_rep, rep_kind, np.where(same_text, "exact", "near")), dtype=pl.String
            ),
            "removed": ~is_rep,
            "cluster_size": sizes[label].astype(np.int64),
            "jaccard": np.round(jac_rep, 4),
            "matched_id": ids.gather(np.where(matched < 0, 0, matched)),
            "matched_jaccard": np.round(matched_j, 4),
            "_row": members,
            "_order": rank[rep] * (m + 1) + np.where(is_rep, -1, rank),
        }
    )
    gone = ~is_rep
    return Plan(
        keep,
        clusters,
        removed,
        rep_cluster,
        n_candidates,
        len(edges),
        removed_rows=members[gone],
        removed_exact=same_text[gone],
    )


def best_partners(
    edges: np.ndarray, edge_j: np.ndarray, rank: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``size`` nodes: the other end of its edge with the highest Jaccard (ties:
    the lowest rank) and that Jaccard; -1 and 0 for a node without edges."""
    partner = np.full(size, -1, dtype=np.int64)
    best = np.zeros(size, dtype=np.float64)
    if len(edges):
        u = np.concatenate([edges[:, 0], edges[:, 1]])
        v = np.concatenate([edges[:, 1], edges[:, 0]])
        j = np.concatenate([edge_j, edge_j])
        o = np.lexsort((rank[v], -j, u))
        u_s = u[o]
        f = np.empty(len(u_s), dtype=bool)
        f[0] = True
        f[1:] = u_s[1:] != u_s[:-1]
        partner[u_s[f]] = v[o][f]
        best[u_s[f]] = j[o][f]
    return partner, best


def cluster_tables(
    columns: dict[str, Any],
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The clusters table, the kept representatives' (row, cluster_id) and the removal
    records, from one entry per member: ``id``, ``representative_id``, ``kind``, ``removed``,
    ``cluster_size``, ``jaccard``, ``matched_id``, ``matched_jaccard`` (both kept only for
    removed members), ``_row`` and ``_order`` (the clusters' order)."""
    cluster_ids = pl.Series(
        "cluster_id",
        [
            f"dup-{xxhash.xxh3_64_hexdigest(str(v).encode())}"
            for v in columns["representative_id"].to_list()
        ],
        dtype=pl.String,
    )
    clusters = (
        pl.DataFrame(columns)
        .with_columns(cluster_ids)
        .select("id", "cluster_id", *[c for c in columns if c != "id"])
        .with_columns(
            pl.when(pl.col("removed"))
            .then(pl.col("matched_id"))
            .otherwise(None)
            .alias("matched_id"),
            pl.when(pl.col("removed"))
            .then(pl.col("matched_jaccard"))
            .otherwise(None)
            .alias("matched_jaccard"),
        )
        .sort("_order")
    )
    rep_cluster = clusters.filter(~pl.col("removed")).select(
        pl.col("_row").alias("row"), "cluster_id"
    )
    removed = _removed_records(clusters.filter(pl.col("removed")))
    return clusters.drop("_row", "_order"), rep_cluster, removed


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
