"""Exact and near-duplicate removal over tables, streamed in partitions across cores.

Pipeline (each step keeps memory bounded by arrays, never a Python object per document):

1. **Signatures** (worker processes, one task per partition of rows): normalise each text,
   hash its exact key (xxh3-128), compute its MinHash signature and band keys. Signatures are
   written straight into one ``(rows, num_perm)`` uint32 ``.npy`` file; only the small
   per-row arrays (exact key, length, band keys) come back to the parent.
2. **Exact groups**: rows with equal exact keys; one representative each.
3. **Near groups** (over exact representatives that have words): candidate pairs from equal
   band keys (numpy sort per band), verified by estimated Jaccard >= threshold, joined by
   union-find (``scipy.sparse.csgraph.connected_components``).
4. **Representatives**: in each cluster the row kept is the first by: ``verified`` is True
   (when that column exists), then longest text (characters), then smallest id. Every other
   member is removed and recorded with its cluster, representative, kind (``exact`` when its
   normalised text equals the representative's, else ``near``), estimated Jaccard to the
   representative, and the row it was matched to.

Results do not depend on the number of workers or the partition size: every value is
computed per row, and ties are broken by id.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import xxhash

from builder.dedup.lsh import band_keys, bucket_pairs, pair_jaccard, unique_pairs
from builder.dedup.minhash import MinHasher
from builder.dedup.normalize import ngram_offsets, tokenize
from builder.diversity import DiversityReport, diversity_from_openers, node_rates, opener_exprs
from builder.errors import InputError
from builder.io_tables import (
    ParquetSink,
    Partition,
    TableSource,
    arrow_mask,
    check_text_dtype,
    open_table,
    read_partition_batches,
    read_table,
    require_text_column,
    write_parquet_atomic,
)
from builder.parallel import process_map
from builder.settings.dedup import DedupSettings
from builder.util.faults import fault_point

ProgressFn = Callable[[int, int], None]

# A worker processes its partition in sub-batches of at most this many rows / text bytes,
# which bounds its memory whatever the partition or document sizes.
_SUB_ROWS = 5000
_SUB_BYTES = 32 << 20

CLUSTER_COLUMNS = (
    "id",
    "cluster_id",
    "representative_id",
    "kind",
    "removed",
    "cluster_size",
    "jaccard",
    "matched_id",
    "matched_jaccard",
)


@dataclass
class DedupStats:
    """Counts and timings of one dedup run (what the CLI prints and the manifest keeps)."""

    rows_in: int = 0
    rows_out: int = 0
    exact_removed: int = 0
    near_removed: int = 0
    clusters: int = 0
    largest_cluster: int = 0
    empty_texts: int = 0
    candidate_pairs: int = 0
    verified_pairs: int = 0
    workers: int = 1
    seconds: float = 0.0
    signature_seconds: float = 0.0
    cluster_seconds: float = 0.0
    write_seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def removed(self) -> int:
        return self.exact_removed + self.near_removed

    @property
    def docs_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "exact_removed": self.exact_removed,
            "near_removed": self.near_removed,
            "clusters": self.clusters,
            "largest_cluster": self.largest_cluster,
            "empty_texts": self.empty_texts,
            "candidate_pairs": self.candidate_pairs,
            "verified_pairs": self.verified_pairs,
            "workers": self.workers,
            "seconds": round(self.seconds, 3),
            "signature_seconds": round(self.signature_seconds, 3),
            "cluster_seconds": round(self.cluster_seconds, 3),
            "write_seconds": round(self.write_seconds, 3),
            "docs_per_s": round(self.docs_per_s, 1),
            "settings": self.settings,
        }


@dataclass
class DedupResult:
    """What dedup found.

    ``kept``: surviving rows, every input column (``None`` from ``dedup_files``, which
    writes them to ``paths["kept"]`` instead). ``clusters``: one row per member of every
    duplicate cluster, representatives included (columns ``CLUSTER_COLUMNS``). ``removed``:
    the removed rows as rejection records (id, stage, reason, detail, cluster_id,
    representative_id, kind, jaccard).
    """

    kept: pl.DataFrame | None
    clusters: pl.DataFrame
    removed: pl.DataFrame
    stats: DedupStats
    paths: dict[str, Path] = field(default_factory=dict)
    # Duplicate rates per taxonomy node (when the input has a taxonomy_path column).
    nodes: pl.DataFrame | None = None
    # The full diversity report, when asked for (dedup_files(..., diversity=True)).
    diversity: DiversityReport | None = None


# -- Worker side --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    num_perm: int
    seed: int
    shingle_size: int
    mode: str
    scheme: str
    bands: int
    rows: int
    hashfunc: Callable[[bytes], int] | None = None


@dataclass
class _Task:
    index: int
    offset: int
    length: int
    spec: _Spec
    sig_path: str
    sig_offset: int  # byte offset of row 0 in the signature file
    text_column: str
    want_text_hash: bool
    partition: Partition | None = None
    texts: pl.Series | None = None


@dataclass
class _TaskResult:
    index: int
    offset: int
    exact: np.ndarray
    lengths: np.ndarray
    shingles: np.ndarray
    bands: np.ndarray
    text_hash: np.ndarray | None
    seconds: float


_HASHERS: dict[_Spec, MinHasher] = {}


def _hasher(spec: _Spec) -> MinHasher:
    if spec not in _HASHERS:
        _HASHERS[spec] = MinHasher(
            num_perm=spec.num_perm,
            seed=spec.seed,
            shingle_size=spec.shingle_size,
            mode=spec.mode,
            scheme=spec.scheme,
            hashfunc=spec.hashfunc,
        )
    return _HASHERS[spec]


def _init_worker() -> None:
    """Keep freed memory inside the worker instead of returning it to the kernel.

    Each sub-batch allocates and frees arrays of tens of MB; glibc would hand them back with
    munmap and fault them in again for the next batch, which on virtual machines costs more
    than the arithmetic (measured: 0.7 s -> 0.1 s for one n-gram pass over 9M words). Only
    done in worker processes we own, never in the caller's process.
    """
    # Ctrl-C is the parent's to handle: it cancels pending tasks and removes the work dir.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX: serve large blocks from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: do not trim the heap eagerly
    except (OSError, AttributeError):
        pass


def _text_chunks(task: _Task) -> Iterator[list[str | None]]:
    if task.texts is not None:
        values = task.texts.to_list()
        for lo in range(0, len(values), _SUB_ROWS):
            yield values[lo : lo + _SUB_ROWS]
        return
    assert task.partition is not None
    buf: list[str | None] = []
    size = 0
    for batch in read_partition_batches(task.partition, [task.text_column]):
        col = batch.column(0)
        buf.extend(col.to_pylist())
        size += col.nbytes
        if len(buf) >= _SUB_ROWS or size >= _SUB_BYTES:
            yield buf
            buf, size = [], 0
    if buf:
        yield buf


def _run_task(task: _Task) -> _TaskResult:
    """Signatures, exact keys and band keys of one partition (runs in a worker)."""
    t0 = time.perf_counter()
    spec = task.spec
    hasher = _hasher(spec)
    exact, lengths, shingles, bands, hashes = [], [], [], [], []
    row = task.offset
    fd = os.open(task.sig_path, os.O_WRONLY)
    try:
        for texts in _text_chunks(task):
            lengths.append(np.fromiter((len(t) if t else 0 for t in texts), np.int64, len(texts)))
            tokens = tokenize(texts, exact=True)
            exact.append(tokens.exact)
            sig = hasher.signatures_from_tokens(tokens)
            shingles.append(np.diff(ngram_offsets(tokens.counts, spec.shingle_size)))
            bands.append(band_keys(sig, spec.bands, spec.rows))
            if task.want_text_hash:
                hashes.append(
                    np.fromiter(
                        (xxhash.xxh3_64_intdigest((t or "").encode("utf-8")) for t in texts),
                        np.uint64,
                        len(texts),
                    )
                )
            os.pwrite(fd, sig.tobytes(), task.sig_offset + row * spec.num_perm * 4)
            row += len(texts)
    finally:
        os.close(fd)
    if row - task.offset != task.length:
        raise RuntimeError(
            f"partition {task.index} yielded {row - task.offset} rows, expected {task.length}"
        )

    def cat(parts, dtype, shape=()):
        return np.concatenate(parts) if parts else np.zeros((0, *shape), dtype=dtype)

    return _TaskResult(
        index=task.index,
        offset=task.offset,
        exact=cat(exact, np.uint64, (2,)),
        lengths=cat(lengths, np.int64),
        shingles=cat(shingles, np.int64),
        bands=cat(bands, np.uint64, (spec.bands,)),
        text_hash=cat(hashes, np.uint64) if task.want_text_hash else None,
        seconds=time.perf_counter() - t0,
    )


#: Maps a function over tasks elsewhere, yielding results as they finish (an executor's
#: ``task_map``: Ray tasks). None: this module's own in-process or process-pool map.
TaskMap = Callable[[Callable[[Any], Any], Sequence[Any]], Iterator[Any]]


def _map_tasks(
    tasks: Sequence[_Task], workers: int, mapper: TaskMap | None = None
) -> Iterator[_TaskResult]:
    """Run tasks with ``mapper``, or in-process (one worker or one task), or in a spawned
    process pool."""
    if mapper is not None:
        yield from mapper(_run_task, tasks)
        return
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield _run_task(task)
        return
    yield from process_map(_run_task, tasks, workers, initializer=_init_worker)


# -- Parent side: from per-row arrays to clusters -------------------------------------------


@dataclass
class _Rows:
    """Per-row arrays gathered from the workers, in global row order."""

    n: int
    exact: np.ndarray
    lengths: np.ndarray
    shingles: np.ndarray
    bands: np.ndarray
    text_hash: np.ndarray | None

    @classmethod
    def empty(cls, n: int, bands: int, want_hash: bool) -> _Rows:
        return cls(
            n=n,
            exact=np.zeros((n, 2), dtype=np.uint64),
            lengths=np.zeros(n, dtype=np.int64),
            shingles=np.zeros(n, dtype=np.int64),
            bands=np.zeros((n, bands), dtype=np.uint64),
            text_hash=np.zeros(n, dtype=np.uint64) if want_hash else None,
        )

    def fill(self, res: _TaskResult) -> int:
        lo, hi = res.offset, res.offset + len(res.lengths)
        self.exact[lo:hi] = res.exact
        self.lengths[lo:hi] = res.lengths
        self.shingles[lo:hi] = res.shingles
        self.bands[lo:hi] = res.bands
        if self.text_hash is not None and res.text_hash is not None:
            self.text_hash[lo:hi] = res.text_hash
        return hi - lo


def _generated_ids(text_hash: np.ndarray) -> pl.Series:
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


def _rank(ids: pl.Series, lengths: np.ndarray, verified: pl.Series | None) -> np.ndarray:
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
class _Plan:
    keep: np.ndarray
    clusters: pl.DataFrame
    removed: pl.DataFrame
    rep_cluster: pl.DataFrame  # row, cluster_id of kept representatives
    candidate_pairs: int
    verified_pairs: int


def _plan(
    rows: _Rows,
    ids: pl.Series,
    verified: pl.Series | None,
    signatures: np.ndarray,
    settings: DedupSettings,
) -> _Plan:
    """Decide clusters, representatives and removals from the per-row arrays."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = rows.n
    arange = np.arange(n, dtype=np.int64)
    rank = _rank(ids, rows.lengths, verified)
    exact_rep = _exact_reps(rows.exact, rank) if settings.exact else arange.copy()

    edges = np.zeros((0, 2), dtype=np.int64)
    edge_j = np.zeros(0, dtype=np.float64)
    n_candidates = 0
    if settings.near:
        cand = np.flatnonzero((exact_rep == arange) & (rows.shingles > 0))
        per_band = [
            bucket_pairs(rows.bands[cand, b], cand, settings.max_bucket)
            for b in range(settings.bands)
        ]
        pairs = unique_pairs(per_band, n)
        del per_band
        n_candidates = len(pairs)
        if n_candidates:
            jac = pair_jaccard(signatures, pairs)
            need = int(np.ceil(settings.threshold * settings.num_perm - 1e-9))
            ok = np.rint(jac * settings.num_perm) >= need
            edges, edge_j = pairs[ok], jac[ok]

    if len(edges):
        graph = coo_matrix(
            (np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n)
        )
        _, labels = connected_components(graph, directed=False)
        labels = labels.astype(np.int64)
    else:
        labels = arange.copy()
    label = labels[exact_rep]

    sizes = np.bincount(label, minlength=n)
    members = np.flatnonzero(sizes[label] >= 2)
    keep = np.ones(n, dtype=bool)
    if len(members) == 0:
        return _Plan(
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
    return _Plan(keep, clusters, removed, rep_cluster, n_candidates, len(edges))


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


# -- Shared driver ----------------------------------------------------------------------------


def _spec(settings: DedupSettings, hashfunc: Callable[[bytes], int] | None) -> _Spec:
    return _Spec(
        num_perm=settings.num_perm,
        seed=settings.seed,
        shingle_size=settings.shingle_size,
        mode=settings.mode,
        scheme=settings.scheme,
        bands=settings.bands,
        rows=settings.rows,
        hashfunc=hashfunc,
    )


def _task_size(n: int, partition_size: int, workers: int | None) -> int:
    """Rows per task: at most ``partition_size``, small enough to give every worker about
    four tasks (load balance), but not below 2,000 rows (per-task overhead)."""
    w = workers or os.cpu_count() or 1
    if w <= 1:
        return partition_size
    return max(1, min(partition_size, max(2_000, -(-n // (4 * w)))))


def _resolve_workers(workers: int | None, settings: DedupSettings, tasks: int) -> int:
    w = workers or settings.workers or os.cpu_count() or 1
    return max(1, min(int(w), max(tasks, 1)))


def _signature_file(path: Path, n: int, num_perm: int) -> int:
    """Create an ``.npy`` file of shape (n, num_perm) uint32; return its data offset."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint32, shape=(n, num_perm))
    offset = int(mm.offset)
    del mm
    return offset


def _open_signatures(path: Path, n: int, num_perm: int) -> np.ndarray:
    if n == 0:
        return np.zeros((0, num_perm), dtype=np.uint32)
    return np.load(path, mmap_mode="r")


def _collect(
    tasks: list[_Task],
    n: int,
    settings: DedupSettings,
    workers: int,
    want_hash: bool,
    progress: ProgressFn | None,
    mapper: TaskMap | None = None,
) -> _Rows:
    rows = _Rows.empty(n, settings.bands, want_hash)
    done = 0
    for res in _map_tasks(tasks, workers, mapper):
        done += rows.fill(res)
        if progress is not None:
            progress(done, n)
    return rows


def _settings_dict(settings: DedupSettings) -> dict[str, Any]:
    keys = (
        "exact",
        "near",
        "mode",
        "scheme",
        "num_perm",
        "bands",
        "rows",
        "shingle_size",
        "threshold",
        "seed",
        "max_bucket",
    )
    return {k: getattr(settings, k) for k in keys}


def _fill_stats(stats: DedupStats, plan: _Plan, rows: _Rows) -> None:
    stats.rows_in = rows.n
    stats.rows_out = int(plan.keep.sum())
    removed_kind = plan.removed["kind"]
    stats.exact_removed = int((removed_kind == "exact").sum())
    stats.near_removed = int((removed_kind == "near").sum())
    stats.clusters = int(plan.clusters["cluster_id"].n_unique()) if plan.clusters.height else 0
    stats.largest_cluster = (
        int(plan.clusters["cluster_size"].max()) if plan.clusters.height else 0  # type: ignore[arg-type]
    )
    stats.empty_texts = int((rows.shingles == 0).sum())
    stats.candidate_pairs = plan.candidate_pairs
    stats.verified_pairs = plan.verified_pairs


def _with_dup_cluster(frame: pl.DataFrame, plan: _Plan, offset: int = 0) -> pl.DataFrame:
    """Fill ``dup_cluster`` of kept rows (cluster id of representatives, else null)."""
    if "dup_cluster" not in frame.columns:
        return frame
    rows = pl.DataFrame({"row": np.arange(offset, offset + frame.height, dtype=np.int64)})
    joined = rows.join(plan.rep_cluster, on="row", how="left", maintain_order="left")
    return frame.with_columns(joined["cluster_id"].alias("dup_cluster"))


def _node_rates(paths: pl.Series | None, plan: _Plan, ids: pl.Series) -> pl.DataFrame | None:
    """Duplicate rates per taxonomy node, from each row's taxonomy_path."""
    if paths is None:
        return None
    n = len(ids)
    exact = np.zeros(n, dtype=bool)
    near = np.zeros(n, dtype=bool)
    if plan.removed.height:
        rows = pl.DataFrame({"id": ids, "_row": np.arange(n)}).join(
            plan.removed.select("id", "kind"), on="id", how="inner"
        )
        r = rows["_row"].to_numpy()
        k = rows["kind"].to_numpy()
        exact[r[k == "exact"]] = True
        near[r[k == "near"]] = True
    frame = pl.DataFrame(
        {"taxonomy_path": paths, "exact_dup": exact, "near_dup": near, "dup": exact | near}
    )
    return node_rates(frame, ["exact_dup", "near_dup", "dup"])


# -- Public API -------------------------------------------------------------------------------


def dedup_table(
    data: pl.DataFrame | str | os.PathLike[str],
    settings: DedupSettings | None = None,
    *,
    text_column: str = "text",
    id_column: str = "id",
    workers: int | None = None,
    hashfunc: Callable[[bytes], int] | None = None,
    progress: ProgressFn | None = None,
) -> DedupResult:
    """Remove exact and near duplicates from a table held in memory.

    ``data`` is a DataFrame or a path (Parquet/JSONL file, directory or glob) small enough
    to load. Rows without an ``id_column`` get stable ids from their text (added to
    ``kept``). ``hashfunc`` only applies to ``settings.mode == "datasketch"``. For inputs
    too large for memory use ``dedup_files``.
    """
    settings = settings or DedupSettings()
    t0 = time.perf_counter()
    source_file = None
    if not isinstance(data, pl.DataFrame):
        source_file = data
        data = read_table(data)
    require_text_column(data.columns, text_column, file=source_file, option="--text-column")
    check_text_dtype(data.schema[text_column], text_column, file=source_file)
    n = data.height
    if n == 0:
        raise InputError("input has no rows", file=source_file, hint="give at least one row")
    has_ids = id_column in data.columns
    if has_ids:
        check_ids(data[id_column], column=id_column, file=source_file)
    spec = _spec(settings, hashfunc)
    texts = data[text_column]
    with tempfile.TemporaryDirectory(prefix="corpus-dedup-") as tmp:
        sig_path = Path(tmp) / "signatures.npy"
        sig_offset = _signature_file(sig_path, n, settings.num_perm)
        size = _task_size(n, settings.partition_size, workers or settings.workers)
        tasks = [
            _Task(
                index=i,
                offset=lo,
                length=min(size, n - lo),
                spec=spec,
                sig_path=str(sig_path),
                sig_offset=sig_offset,
                text_column=text_column,
                want_text_hash=not has_ids,
                texts=texts.slice(lo, size),
            )
            for i, lo in enumerate(range(0, n, size))
        ]
        nworkers = _resolve_workers(workers, settings, len(tasks))
        t_sig = time.perf_counter()
        rows = _collect(tasks, n, settings, nworkers, not has_ids, progress)
        sig_seconds = time.perf_counter() - t_sig
        if has_ids:
            ids = data[id_column]
            frame = data
        else:
            assert rows.text_hash is not None
            ids = _generated_ids(rows.text_hash).rename(id_column)
            frame = data.with_columns(ids).select([id_column, *data.columns])
        verified = frame["verified"] if "verified" in frame.columns else None
        signatures = _open_signatures(sig_path, n, settings.num_perm)
        plan = _plan(rows, ids, verified, signatures, settings)
        del signatures
    kept = _with_dup_cluster(frame.filter(pl.Series(plan.keep)), _plan_kept_rows(plan))
    stats = DedupStats(workers=nworkers, settings=_settings_dict(settings))
    _fill_stats(stats, plan, rows)
    stats.signature_seconds = sig_seconds
    nodes = _node_rates(
        frame["taxonomy_path"] if "taxonomy_path" in frame.columns else None, plan, ids
    )
    stats.seconds = time.perf_counter() - t0
    return DedupResult(
        kept=kept, clusters=plan.clusters, removed=plan.removed, stats=stats, nodes=nodes
    )


def _plan_kept_rows(plan: _Plan) -> _Plan:
    """The plan with ``rep_cluster`` rows renumbered to positions among kept rows."""
    kept_pos = np.cumsum(plan.keep) - 1
    rep = plan.rep_cluster.with_columns(
        pl.Series("row", kept_pos[plan.rep_cluster["row"].to_numpy()], dtype=pl.Int64)
    )
    return _Plan(
        plan.keep, plan.clusters, plan.removed, rep, plan.candidate_pairs, plan.verified_pairs
    )


def dedup_files(
    input_path: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    settings: DedupSettings | None = None,
    *,
    text_column: str = "text",
    id_column: str = "id",
    workers: int | None = None,
    hashfunc: Callable[[bytes], int] | None = None,
    progress: ProgressFn | None = None,
    save_signatures: bool = False,
    diversity: bool = False,
    mapper: TaskMap | None = None,
) -> DedupResult:
    """Deduplicate Parquet/JSONL input of any size into ``outdir``, in bounded memory.

    ``mapper`` runs the signature tasks elsewhere (Ray tasks: ``outdir`` must then be on a
    filesystem the workers see, since they write the signatures there); the band grouping
    gathers their band keys here either way.

    Writes ``outdir/kept.parquet`` (surviving rows, every column, plus ``id_column`` when
    the input had none) and ``outdir/clusters.parquet`` (``CLUSTER_COLUMNS``); with
    ``save_signatures`` also ``outdir/signatures.npy`` (rows in input order); with
    ``diversity`` also the diversity report (``outdir/diversity_*.parquet``, see
    ``builder.diversity``). Every file appears atomically. The texts are read twice
    (signatures, then the kept rows; a third time for the report), never held in memory at
    once.
    """
    settings = settings or DedupSettings()
    t0 = time.perf_counter()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".dedup-work-", dir=out))
    try:
        source = open_table(
            input_path,
            text_column=text_column,
            workdir=work,
            partition_size=settings.partition_size,
        )
        n = source.num_rows
        has_ids = id_column in source.columns
        spec = _spec(settings, hashfunc)
        sig_path = work / "signatures.npy"
        sig_offset = _signature_file(sig_path, n, settings.num_perm)
        nworkers_hint = workers or settings.workers or os.cpu_count() or 1
        parts = source.partitions(
            _task_size(n, settings.partition_size, nworkers_hint), nworkers_hint
        )
        tasks = [
            _Task(
                index=i,
                offset=p.offset,
                length=p.length,
                spec=spec,
                sig_path=str(sig_path),
                sig_offset=sig_offset,
                text_column=text_column,
                want_text_hash=not has_ids,
                partition=p,
            )
            for i, p in enumerate(parts)
        ]
        nworkers = _resolve_workers(workers, settings, len(tasks))
        t_sig = time.perf_counter()
        rows = _collect(tasks, n, settings, nworkers, not has_ids, progress, mapper)
        sig_seconds = time.perf_counter() - t_sig
        fault_point("dedup.signatures")

        t_plan = time.perf_counter()
        small = source.read_columns(
            [c for c in (id_column, "verified", "taxonomy_path") if c in source.columns]
        )
        if has_ids:
            ids = small[id_column]
            check_ids(ids, column=id_column, file=source.label)
        else:
            assert rows.text_hash is not None
            ids = _generated_ids(rows.text_hash).rename(id_column)
        verified = small["verified"] if "verified" in small.columns else None
        tax = small["taxonomy_path"] if "taxonomy_path" in small.columns else None
        del small
        signatures = _open_signatures(sig_path, n, settings.num_perm)
        plan = _plan(rows, ids, verified, signatures, settings)
        del signatures
        nodes = _node_rates(tax, plan, ids)
        plan_seconds = time.perf_counter() - t_plan

        t_write = time.perf_counter()
        paths = {
            "kept": _write_kept(source, out / "kept.parquet", plan, ids, has_ids, id_column),
            "clusters": write_parquet_atomic(plan.clusters, out / "clusters.parquet"),
        }
        if save_signatures:
            dest = out / "signatures.npy"
            os.replace(sig_path, dest)
            paths["signatures"] = dest
        write_seconds = time.perf_counter() - t_write
        report = None
        if diversity:
            report = _diversity(source, text_column, ids, tax, plan, settings)
            paths.update({f"diversity_{k}": v for k, v in report.write(out).items()})
        stats = DedupStats(workers=nworkers, settings=_settings_dict(settings))
        _fill_stats(stats, plan, rows)
        stats.signature_seconds = sig_seconds
        stats.cluster_seconds = plan_seconds
        stats.write_seconds = write_seconds
        stats.seconds = time.perf_counter() - t0
        return DedupResult(
            kept=None,
            clusters=plan.clusters,
            removed=plan.removed,
            stats=stats,
            paths=paths,
            nodes=nodes,
            diversity=report,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _diversity(
    source: TableSource,
    text_column: str,
    ids: pl.Series,
    tax: pl.Series | None,
    plan: _Plan,
    settings: DedupSettings,
) -> DiversityReport:
    """Openers are computed by a streaming Polars scan over the first characters of each
    text, so the report never loads the texts."""
    scan = pl.concat(
        [pl.scan_parquet(f).select(text_column) for f in source.files], how="vertical_relaxed"
    )
    base = scan.select(opener_exprs(text_column, settings.opener_words)).collect(engine="streaming")
    base = base.with_columns(ids.alias("id"))
    if tax is not None:
        base = base.with_columns(tax.alias("taxonomy_path"))
    return diversity_from_openers(
        base, plan.clusters, None, id_column="id", opener_words=settings.opener_words
    )


def _write_kept(
    source: TableSource,
    path: Path,
    plan: _Plan,
    ids: pl.Series,
    has_ids: bool,
    id_column: str,
) -> Path:
    """Stream the input again and write the kept rows with every column."""
    schema = source.schema
    if not has_ids:
        schema = schema.insert(0, pa.field(id_column, pa.string()))
    dup_idx = schema.get_field_index("dup_cluster")
    if dup_idx >= 0:
        schema = schema.set(dup_idx, pa.field("dup_cluster", pa.string()))
    rep = dict(
        zip(
            plan.rep_cluster["row"].to_list(), plan.rep_cluster["cluster_id"].to_list(), strict=True
        )
    )
    id_arrow = ids.to_arrow() if not has_ids else None
    offset = 0
    with ParquetSink(path, schema) as sink:
        for batch in source.iter_batches():
            lo, hi = offset, offset + batch.num_rows
            offset = hi
            mask = plan.keep[lo:hi]
            if not mask.any():
                continue
            table = pa.Table.from_batches([batch])
            if id_arrow is not None:
                table = table.add_column(
                    0, id_column, id_arrow.slice(lo, hi - lo).cast(pa.string())
                )
            if dup_idx >= 0:
                values = [rep.get(r) for r in range(lo, hi)]
                table = table.set_column(
                    table.schema.get_field_index("dup_cluster"),
                    "dup_cluster",
                    pa.array(values, type=pa.string()),
                )
            sink.write(table.filter(arrow_mask(mask)))
    return path
