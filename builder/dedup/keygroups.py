"""Rows whose keys repeat, found in bounded memory: an external hash partition.

Dedup's exact groups (128-bit keys of the normalised texts) and the id checks of dedup,
decontam and assembly (64-bit hashes of the ids) all ask one question of a key per row: which
rows share their key with another row? Sorting every key at once holds ~50 bytes a row at the
peak, so memory grows with the corpus. ``EqualKeys`` takes the keys a batch at a time; while
they fit in ``budget_rows`` it keeps them, and past that it spills them (with their row
numbers) to ``FANOUT`` files by a few bits of the key. Equal keys land in one file, so each
file is grouped on its own, and a file still over the budget is split again by the next bits.
What is held at once is one budget's worth of keys, plus the answer: the rows of the groups.

The files are chosen by bits of the first key word, so the keys should be hashes (uniform
bits) for the files to be even; which rows are grouped never depends on it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

#: Keys held in memory at once (a file over this is split again): 256k rows of a 128-bit key
#: are 6 MB on disk and ~20 MB while they are sorted.
KEY_ROWS = 1 << 18

#: Files a spill splits the keys into, by ``FANOUT_BITS`` bits of the first key word a level.
FANOUT_BITS = 4
FANOUT = 1 << FANOUT_BITS


def groups_in_memory(keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``rows`` whose key (a row of ``keys``, shape (n, width)) another row shares, and a
    group number for each (equal keys, equal numbers: 0, 1, ...), both in the order of
    ascending keys."""
    n = len(rows)
    if n < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.lexsort(keys.T[::-1])
    k = keys[order]
    same = (k[1:] == k[:-1]).all(axis=1)  # position i+1 repeats position i's key
    del k
    in_group = np.zeros(n, dtype=bool)
    in_group[1:] = same
    in_group[:-1] |= same
    new = np.ones(n, dtype=bool)
    new[1:] = ~same
    # numbered 0..g-1 (the keys met once, between the groups, leave gaps to close)
    _, group = np.unique(np.cumsum(new)[in_group], return_inverse=True)
    return rows[order[in_group]].astype(np.int64), group.astype(np.int64)


class EqualKeys:
    """Collects a key per row (``add``, in row order) and tells which rows share one
    (``groups``), holding at most ``budget_rows`` keys at once.

    ``width``: 64-bit words per key; ``budget_rows``: default ``KEY_ROWS``. Spill files go
    to a temporary folder inside ``spill_dir`` (default: the system's), removed by
    ``groups`` or ``close``.
    """

    def __init__(
        self,
        width: int,
        *,
        spill_dir: str | os.PathLike[str] | None = None,
        budget_rows: int | None = None,
    ) -> None:
        budget = KEY_ROWS if budget_rows is None else budget_rows
        if width < 1 or budget < 1:
            raise ValueError("width and budget_rows must be at least 1")
        self.width = width
        self.budget_rows = budget
        self.rows = 0
        self.spilled = 0  # rows written to spill files (0: everything stayed in memory)
        self.largest_held = 0  # the most keys held at once (for tests and benches)
        self._spill_dir = spill_dir
        self._held: list[np.ndarray] = []  # records: (k, width + 1) uint64, row number last
        self._held_rows = 0
        self._tmp: Path | None = None

    def add(self, keys: np.ndarray) -> None:
        """The keys of the next ``len(keys)`` rows: shape (k,) for one word, else (k, width)."""
        keys = np.asarray(keys, dtype=np.uint64).reshape(len(keys), -1)
        if keys.shape[1] != self.width:
            raise ValueError(f"keys have {keys.shape[1]} words, not {self.width}")
        record = np.empty((len(keys), self.width + 1), dtype=np.uint64)
        record[:, : self.width] = keys
        record[:, self.width] = np.arange(self.rows, self.rows + len(keys), dtype=np.uint64)
        self.rows += len(keys)
        self._held.append(record)
        self._held_rows += len(record)
        self.largest_held = max(self.largest_held, self._held_rows)
        if self._held_rows > self.budget_rows:
            self._spill()

    def _spill(self) -> None:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="equal-keys-", dir=self._spill_dir))
        records = np.concatenate(self._held) if self._held else self._empty()
        self._held, self._held_rows = [], 0
        _append_split(records, self._tmp, level=0)
        self.spilled += len(records)

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.width + 1), dtype=np.uint64)

    def groups(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows that share their key with another row (ascending) and a group number
        for each (rows with equal keys have equal numbers). Ends the collection."""
        try:
            if self._tmp is None:
                records = np.concatenate(self._held) if self._held else self._empty()
                self._held = []
                found = [_groups_of(records, self.width)]
            else:
                self._spill()
                found = []
                for p in range(FANOUT):
                    found.extend(self._groups_of_file(self._tmp / f"0-{p}", level=1))
        finally:
            self.close()
        rows_parts, group_parts, offset = [], [], 0
        for rows, group in found:
            if len(rows):
                rows_parts.append(rows)
                group_parts.append(group + offset)
                offset += int(group.max()) + 1
        if not rows_parts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        rows = np.concatenate(rows_parts)
        group = np.concatenate(group_parts)
        by_row = np.argsort(rows, kind="stable")
        return rows[by_row], group[by_row]

    def _groups_of_file(self, path: Path, level: int) -> list[tuple[np.ndarray, np.ndarray]]:
        if not path.exists():
            return []
        size = path.stat().st_size // (8 * (self.width + 1))
        if size <= self.budget_rows or level * FANOUT_BITS >= 64:
            records = np.fromfile(path, dtype=np.uint64).reshape(-1, self.width + 1)
            path.unlink()
            self.largest_held = max(self.largest_held, len(records))
            return [_groups_of(records, self.width)]
        # Too many for the budget: split again by the next bits, a budget's worth at a time.
        sub = path.parent / f"{path.name}-split"
        sub.mkdir()
        with path.open("rb") as f:
            while chunk := f.read(self.budget_rows * 8 * (self.width + 1)):
                records = np.frombuffer(chunk, dtype=np.uint64).reshape(-1, self.width + 1)
                _append_split(records, sub, level=level)
        path.unlink()
        parts = [sub / f"{level}-{p}" for p in range(FANOUT)]
        parts = [p for p in parts if p.exists()]
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for p in parts:
            # One file got everything: the keys are (almost surely) all equal, and no
            # further bits would split them.
            out.extend(self._groups_of_file(p, 64 // FANOUT_BITS if len(parts) == 1 else level + 1))
        shutil.rmtree(sub, ignore_errors=True)
        return out

    def close(self) -> None:
        """Remove the spill files (``groups`` does it too)."""
        self._held, self._held_rows = [], 0
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def _groups_of(records: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    return groups_in_memory(records[:, :width], records[:, width])


def _append_split(records: np.ndarray, folder: Path, *, level: int) -> None:
    """Append each record to ``folder/{level}-{p}``, p = the level's bits of its first word."""
    if len(records) == 0:
        return
    part = (records[:, 0] >> np.uint64(level * FANOUT_BITS)) & np.uint64(FANOUT - 1)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(FANOUT + 1, dtype=np.uint64))
    grouped = records[order]
    for p in np.flatnonzero(np.diff(bounds)).tolist():
        with (folder / f"{level}-{p}").open("ab") as f:
            f.write(grouped[bounds[p] : bounds[p + 1]].tobytes())
