"""External band grouping: candidate pairs one bucket at a time (the shuffle's reduce side).

Every piece wrote its band entries ordered by bucket (``key % buckets``) with an index of
where each bucket starts (``builder.dedup.signatures``). A bucket task reads its slice of
every piece, keeps the entries of candidate rows (a memory-mapped mask written by the
parent), groups them per band by key exactly as the in-memory banding did
(``lsh.bucket_pairs``: rows ascending within a band), and estimates each candidate pair's
Jaccard from the signature files. Peak memory is one bucket's entries and pairs, whatever
the corpus size; the parent only merges the (few) candidate pairs. Equal band keys always
land in the same bucket, so the pairs are those of the in-memory grouping for any number of
buckets. On Ray each bucket is a task (a shuffle, not a gather on the driver).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from builder.dedup.lsh import bucket_pairs, pair_jaccard, unique_pairs
from builder.dedup.signatures import ENTRY, SignatureStore, piece_path
from builder.util.files import atomic_write

#: Band entries per bucket the default aims at: 14 bytes each on disk, ~65 bytes each while
#: a task groups them (row numbers widened, masks, the sort's order and copies), so ~30 MB a
#: task. The bucket count grows with the corpus and a bucket does not: 4M entries (one
#: bucket up to 250k documents at 16 bands, grouped in the build's own process) measured
#: +199 MB at 200k documents.
BUCKET_ENTRIES = 500_000

TaskMap = Callable[[Callable[[Any], Any], Sequence[Any]], Iterator[Any]]


def bucket_count(rows_estimate: int, bands: int) -> int:
    """Buckets for about ``BUCKET_ENTRIES`` entries each (from an upper estimate of rows)."""
    return max(1, min(4096, -(-rows_estimate * bands // BUCKET_ENTRIES)))


@dataclass(frozen=True)
class BucketTask:
    bucket: int
    workdir: str
    offsets: tuple[int, ...]  # global row of each piece's first row, then the total
    bands: int
    max_bucket: int
    num_perm: int


@dataclass(frozen=True)
class BucketResult:
    bucket: int
    pairs: np.ndarray  # (m, 2) int64, a < b, unique within the bucket
    jaccard: np.ndarray  # (m,) float64
    entries: int  # candidate entries held at once (the memory bound)
    seconds: float


def write_candidates(workdir: str | Path, mask: np.ndarray) -> Path:
    """The candidate mask the bucket tasks read (one byte a row, written atomically)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, mask.astype(bool))

    return atomic_write(Path(workdir) / "candidates.npy", write)


def run_bucket(task: BucketTask) -> BucketResult:
    """Candidate pairs of one bucket with their estimated Jaccard."""
    t0 = time.perf_counter()
    wd = Path(task.workdir)
    cand = np.load(wd / "candidates.npy", mmap_mode="r")
    keys, rows, bands = [], [], []
    for k in range(len(task.offsets) - 1):
        if task.offsets[k + 1] == task.offsets[k]:
            continue
        index = np.load(piece_path(wd, k, "index.npy"))
        lo, hi = int(index[task.bucket]), int(index[task.bucket + 1])
        if hi == lo:
            continue
        part = np.load(piece_path(wd, k, "bands.npy"), mmap_mode="r")[lo:hi]
        glob = part["row"].astype(np.int64) + task.offsets[k]
        keep = np.asarray(cand[glob])
        keys.append(np.asarray(part["key"])[keep])
        rows.append(glob[keep])
        bands.append(np.asarray(part["band"])[keep])
    n = task.offsets[-1]
    if not keys:
        empty = np.zeros((0, 2), dtype=np.int64)
        return BucketResult(task.bucket, empty, np.zeros(0), 0, time.perf_counter() - t0)
    key = np.concatenate(keys)
    row = np.concatenate(rows)
    band = np.concatenate(bands)
    del keys, rows, bands
    # Per band, rows ascending (pieces come in row order, each band-major and row-sorted).
    order = np.argsort(band, kind="stable")
    key, row, band = key[order], row[order], band[order]
    cuts = np.flatnonzero(np.diff(band)) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [len(band)]))
    per_band = [
        bucket_pairs(key[a:b], row[a:b], task.max_bucket)
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True)
    ]
    pairs = unique_pairs(per_band, n)
    store = SignatureStore(wd, task.offsets, task.num_perm)
    jac = pair_jaccard(store, pairs) if len(pairs) else np.zeros(0)
    return BucketResult(task.bucket, pairs, jac, len(key), time.perf_counter() - t0)


def find_pairs(
    workdir: str | Path,
    offsets: Sequence[int],
    mask: np.ndarray,
    *,
    buckets: int,
    bands: int,
    max_bucket: int,
    num_perm: int,
    task_map: TaskMap,
) -> tuple[np.ndarray, np.ndarray, int]:
    """All candidate pairs (sorted by (a, b), unique) with their Jaccard, and the largest
    number of entries one bucket task held."""
    write_candidates(workdir, mask)
    tasks = [
        BucketTask(b, str(workdir), tuple(int(o) for o in offsets), bands, max_bucket, num_perm)
        for b in range(buckets)
    ]
    pairs, jacs, largest = [], [], 0
    for res in task_map(run_bucket, tasks):
        pairs.append(res.pairs)
        jacs.append(res.jaccard)
        largest = max(largest, res.entries)
    n = int(offsets[-1])
    allp = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    allj = np.concatenate(jacs) if jacs else np.zeros(0)
    if len(allp) == 0:
        return allp.reshape(0, 2), allj, largest
    # The same pair found in several bands (hence buckets) has the same Jaccard: keep one.
    code, first = np.unique(allp[:, 0] * np.int64(n) + allp[:, 1], return_index=True)
    return np.stack([code // n, code % n], axis=1), allj[first], largest


__all__ = ["ENTRY", "BucketResult", "BucketTask", "bucket_count", "find_pairs", "run_bucket"]
