"""Signature tasks: one piece of input in, its intermediate files in the work directory out.

A task normalises and tokenises its texts, and writes, each file atomically
(``builder.util.files``), then a ``.done.json`` marker last:

- ``pNNNNN.sig.npy``: the MinHash signatures, ``(rows, num_perm)`` uint32;
- ``pNNNNN.rows.parquet``: per row the exact key, length, shingle count, text hash (when ids
  come from the text) and the two opener columns (when the diversity report is asked for);
- ``pNNNNN.bands.npy`` + ``pNNNNN.index.npy``: every (band key, local row, band) entry,
  ordered by bucket (``key % buckets``), band, row; the index holds each bucket's start, so
  a bucket task reads only its slice of every piece (the shuffle's map output);
- ``pNNNNN.table.arrow``: the parsed rows of a JSONL piece (Arrow IPC; the kept rows are
  written from it later, so JSONL is parsed once, in parallel);
- ``pNNNNN.hits.parquet``: with a decontamination index (``PieceTask.scan``), the benchmark
  n-gram hits of the piece's rows (``builder.decontam_index.scan_tokens`` over the words
  tokenized for the signatures: the texts are read and tokenized once for both).

A piece whose marker exists is finished: a rerun after a kill reuses it and computes only
the others. Nothing here depends on which process runs the task (local pool or Ray).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import xxhash

from builder.dedup.keygroups import EqualKeys
from builder.dedup.lsh import band_keys
from builder.dedup.minhash import MinHasher
from builder.dedup.normalize import Tokens, ngram_offsets, tokenize
from builder.dedup.openers import HEAD_CHARS, openers
from builder.dedup.piece import Piece, read_jsonl_piece, text_batches
from builder.util.files import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from builder.decontam_index import IndexSpec

#: Entries of the band files: the band key, the row within its piece, the band.
ENTRY = np.dtype([("key", "<u8"), ("row", "<u4"), ("band", "<u2")])


@dataclass(frozen=True)
class Spec:
    """Everything that determines a piece's files (part of the work directory's key)."""

    num_perm: int
    seed: int
    shingle_size: int
    mode: str
    scheme: str
    bands: int
    rows: int
    buckets: int
    hashfunc: Callable[[bytes], int] | None = None


@dataclass(frozen=True)
class PieceTask:
    piece: Piece
    spec: Spec
    workdir: str
    text_column: str
    want_text_hash: bool
    opener_words: int | None  # None: no opener columns
    texts: pl.Series | None = None  # memory pieces
    #: The decontamination index to scan the rows against as well (``builder.decontam_index.
    #: IndexSpec``; the worker builds it once), or None.
    scan: IndexSpec | None = None


@dataclass(frozen=True)
class PieceDone:
    """What a task reports (the data is in its files). ``error``: a JSONL piece that did not
    parse (the parent names the bad line); ``computed``: False when the files existed."""

    index: int
    rows: int
    seconds: float
    computed: bool = True
    error: str | None = None


def piece_path(workdir: str | Path, index: int, suffix: str) -> Path:
    return Path(workdir) / f"p{index:05d}.{suffix}"


def read_done(workdir: str | Path, index: int) -> PieceDone | None:
    """The marker of a finished piece, or None (none yet, or its files are not the sizes
    it recorded: then the piece is computed again)."""
    path = piece_path(workdir, index, "done.json")
    try:
        data = json.loads(path.read_text())
        sizes = data["sizes"]
        for name, size in sizes.items():
            if (Path(workdir) / name).stat().st_size != size:
                return None
    except (OSError, ValueError, KeyError):
        return None
    return PieceDone(index, int(data["rows"]), float(data["seconds"]), computed=False)


_HASHERS: dict[Spec, MinHasher] = {}


def _hasher(spec: Spec) -> MinHasher:
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


def _band_entries(bands: np.ndarray, row0: int) -> np.ndarray:
    """Entries of a sub-batch's band keys, band-major (rows ascending within a band)."""
    n, nb = bands.shape
    out = np.empty(n * nb, dtype=ENTRY)
    out["key"] = bands.T.reshape(-1)
    out["row"] = np.tile(np.arange(row0, row0 + n, dtype=np.uint32), nb)
    out["band"] = np.repeat(np.arange(nb, dtype=np.uint16), n)
    return out


def _bucketed(entries: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Entries ordered by (bucket, band, row) and each bucket's start (``buckets + 1``)."""
    bucket = (entries["key"] % np.uint64(buckets)).astype(np.int64)
    order = np.lexsort((entries["row"], entries["band"], bucket))
    index = np.zeros(buckets + 1, dtype=np.int64)
    np.cumsum(np.bincount(bucket, minlength=buckets), out=index[1:])
    return entries[order], index


def _scratch(path: Path, write: Callable[[Path], None]) -> None:
    """Write one intermediate file atomically, without fsync: a piece is only trusted when
    its marker's recorded sizes match (see ``read_done``), which a power cut that lost
    unsynced data would break, so the piece is recomputed then."""
    atomic_write(path, write, durable=False)


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    _scratch(path, write)


def run_piece(task: PieceTask) -> PieceDone:
    """Compute and write one piece's files (skipped when its marker exists)."""
    done = read_done(task.workdir, task.piece.index)
    if done is not None:
        return done
    t0 = time.perf_counter()
    spec, piece = task.spec, task.piece
    frame = None
    if piece.kind == "jsonl":
        try:
            frame = read_jsonl_piece(piece)
        except Exception as exc:  # noqa: BLE001 - the parent scans the file for the bad line
            return PieceDone(piece.index, 0, 0.0, error=str(exc))
        if frame.height and task.text_column in frame.columns:
            dtype = frame.schema[task.text_column]
            if dtype not in (pl.String, pl.Null):
                return PieceDone(piece.index, 0, 0.0, error=f"text dtype {dtype}")
    hasher = _hasher(spec)
    sigs, exact, lengths, shingles, entries, hashes, heads = [], [], [], [], [], [], []
    hits: list[pl.DataFrame] = []
    row = 0
    for batch in text_batches(piece, task.text_column, frame=frame, texts=task.texts):
        texts = batch.to_list()
        lengths.append(np.fromiter((len(t) if t else 0 for t in texts), np.int64, len(texts)))
        tokens = tokenize(texts, exact=True)
        exact.append(tokens.exact)
        sig = hasher.signatures_from_tokens(tokens)
        sigs.append(sig)
        shingles.append(np.diff(ngram_offsets(tokens.counts, spec.shingle_size)))
        entries.append(_band_entries(band_keys(sig, spec.bands, spec.rows), row))
        if task.want_text_hash:
            hashes.append(
                np.fromiter(
                    (xxhash.xxh3_64_intdigest((t or "").encode("utf-8")) for t in texts),
                    np.uint64,
                    len(texts),
                )
            )
        if task.opener_words is not None:
            heads.append(batch.str.slice(0, HEAD_CHARS).rename("t"))
        if task.scan is not None:
            found = _scan(task.scan, tokens)
            if found.height:
                hits.append(found.with_columns(pl.col("row") + row))
        row += len(texts)
    if piece.kind != "jsonl" and row != piece.length:
        raise RuntimeError(f"piece {piece.index} yielded {row} rows, expected {piece.length}")

    def cat(parts: list[np.ndarray], dtype: Any, shape: tuple[int, ...] = ()) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0, *shape), dtype=dtype)

    wd = task.workdir
    if frame is not None and frame.height:
        _scratch(
            piece_path(wd, piece.index, "table.arrow"),
            lambda tmp: frame.write_ipc(
                tmp, compression="uncompressed", compat_level=pl.CompatLevel.oldest()
            ),
        )
    _save_npy(piece_path(wd, piece.index, "sig.npy"), cat(sigs, np.uint32, (spec.num_perm,)))
    keys = cat(exact, np.uint64, (2,))
    cols: dict[str, Any] = {
        "exact_hi": keys[:, 0],
        "exact_lo": keys[:, 1],
        "length": cat(lengths, np.int64),
        "shingles": cat(shingles, np.int64),
    }
    if task.want_text_hash:
        cols["text_hash"] = cat(hashes, np.uint64)
    rows_frame = pl.DataFrame(cols)
    if task.opener_words is not None:
        texts_head = pl.concat(heads) if heads else pl.Series("t", [], dtype=pl.String)
        rows_frame = pl.concat(
            [rows_frame, openers(texts_head, task.opener_words)], how="horizontal"
        )
    _scratch(
        piece_path(wd, piece.index, "rows.parquet"),
        lambda tmp: rows_frame.write_parquet(tmp, compression="uncompressed", statistics=False),
    )
    if task.scan is not None:
        found = pl.concat(hits) if hits else _no_hits()
        _scratch(
            piece_path(wd, piece.index, "hits.parquet"),
            lambda tmp: found.write_parquet(tmp, compression="uncompressed", statistics=False),
        )
    ordered, index = _bucketed(cat(entries, ENTRY), spec.buckets)
    _save_npy(piece_path(wd, piece.index, "bands.npy"), ordered)
    _save_npy(piece_path(wd, piece.index, "index.npy"), index)
    seconds = time.perf_counter() - t0
    done_name = piece_path(wd, piece.index, "done.json").name
    sizes = {
        p.name: p.stat().st_size
        for p in Path(wd).glob(f"p{piece.index:05d}.*")
        if p.is_file() and p.name != done_name
    }
    marker = json.dumps({"rows": row, "seconds": round(seconds, 4), "sizes": sizes})
    _scratch(piece_path(wd, piece.index, "done.json"), lambda tmp: tmp.write_text(marker))
    return PieceDone(piece.index, row, seconds)


def _scan(spec: IndexSpec, tokens: Tokens) -> pl.DataFrame:
    """The decontamination hits of one batch's words (``row``: position in the batch)."""
    from builder.decontam_index import load_index, scan_tokens

    return scan_tokens(tokens, load_index(spec), spec.settings)


def _no_hits() -> pl.DataFrame:
    from builder.decontam_index import _empty_hits

    return _empty_hits(with_row=True)


def read_scan_hits(workdir: str | Path, offsets: Sequence[int]) -> pl.DataFrame:
    """Every piece's decontamination hits, ``row`` numbered over all pieces (row order)."""
    frames = []
    for k in range(len(offsets) - 1):
        frame = pl.read_parquet(piece_path(workdir, k, "hits.parquet"))
        if frame.height:
            frames.append(frame.with_columns(pl.col("row") + int(offsets[k])))
    return pl.concat(frames) if frames else _no_hits()


def rows_by_piece(
    offsets: np.ndarray, rows: np.ndarray
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """For each piece holding some of ``rows`` (global row numbers; ``offsets``: each
    piece's first row, then the total): the piece, a mask of the ``rows`` it holds, and
    their rows within it."""
    which = np.searchsorted(offsets, rows, side="right") - 1
    for k in np.unique(which).tolist():
        sel = which == k
        yield k, sel, rows[sel] - offsets[k]


class SignatureStore:
    """Signature rows by global row number, read from the pieces' files (memory-mapped).

    ``store[rows]`` gathers the given rows (any order) into one ``(len(rows), num_perm)``
    array; only those rows' pages are touched.
    """

    def __init__(self, workdir: str | Path, offsets: Sequence[int], num_perm: int) -> None:
        self.workdir = Path(workdir)
        self.offsets = np.asarray(offsets, dtype=np.int64)  # len(pieces) + 1
        self.num_perm = num_perm
        self._maps: dict[int, np.ndarray] = {}

    def _map(self, k: int) -> np.ndarray:
        if k not in self._maps:
            self._maps[k] = np.load(piece_path(self.workdir, k, "sig.npy"), mmap_mode="r")
        return self._maps[k]

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.num_perm), dtype=np.uint32)
        for k, sel, local in rows_by_piece(self.offsets, rows):
            out[sel] = self._map(k)[local]
        return out

    def write_all(self, dest: Path) -> Path:
        """All signatures, in row order, as one ``.npy`` file (written atomically)."""
        n = int(self.offsets[-1])

        def fill(tmp: Path) -> None:
            mm = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.uint32, shape=(n, self.num_perm)
            )
            for k in range(len(self.offsets) - 1):
                lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
                if hi > lo:
                    mm[lo:hi] = self._map(k)
            mm.flush()
            del mm

        return atomic_write(dest, fill)


class PieceRows:
    """The pieces' per-row files (``pNNNNN.rows.parquet``) as the plan's ``RowFacts``: one
    boolean per row is held (``words``); the exact groups and the keys and lengths of the
    rows the plan names are read from the files when asked for."""

    def __init__(self, workdir: str | Path, offsets: Sequence[int]) -> None:
        self.workdir = Path(workdir)
        self.offsets = np.asarray(offsets, dtype=np.int64)  # len(pieces) + 1
        self._words: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.offsets[-1])

    def _read(self, k: int, columns: list[str]) -> pl.DataFrame:
        return pl.read_parquet(piece_path(self.workdir, k, "rows.parquet"), columns=columns)

    def columns(self, columns: list[str]) -> Iterator[pl.DataFrame]:
        """``columns`` of every piece's rows, a piece at a time, in row order."""
        for k in range(len(self.offsets) - 1):
            yield self._read(k, columns)

    def words(self) -> np.ndarray:
        if self._words is None:
            parts = [f["shingles"].to_numpy() > 0 for f in self.columns(["shingles"])]
            self._words = np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
        return self._words.copy()

    def exact_groups(self) -> tuple[np.ndarray, np.ndarray]:
        keys = EqualKeys(2, spill_dir=self.workdir)
        for f in self.columns(["exact_hi", "exact_lo"]):
            keys.add(np.stack([f["exact_hi"].to_numpy(), f["exact_lo"].to_numpy()], axis=1))
        return keys.groups()

    def at(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64)
        exact = np.empty((len(rows), 2), dtype=np.uint64)
        lengths = np.empty(len(rows), dtype=np.int64)
        for k, sel, local in rows_by_piece(self.offsets, rows):
            f = self._read(k, ["exact_hi", "exact_lo", "length"])
            exact[sel, 0] = f["exact_hi"].to_numpy()[local]
            exact[sel, 1] = f["exact_lo"].to_numpy()[local]
            lengths[sel] = f["length"].to_numpy()[local]
        return exact, lengths
