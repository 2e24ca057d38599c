"""One piece of dedup input, and how a signature task reads it (worker side).

Kept apart from ``source.py`` (which plans the pieces, in the parent) so that a worker
process imports only numpy and Polars: pyarrow (~0.15 s of CPU a worker) is imported only
for Parquet pieces.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import polars as pl

#: A worker processes a piece in sub-batches of at most this many rows / text bytes, which
#: bounds its memory whatever the piece or document sizes (1,000 rows measured fastest: the
#: per-batch arrays stay in cache-friendly sizes and a fresh worker has little to fault in).
SUB_ROWS = 1000
SUB_BYTES = 32 << 20


@dataclass(frozen=True)
class Piece:
    """One task's input. ``kind`` is ``parquet`` (``row_groups``, ``skip``, ``length``),
    ``jsonl`` (bytes ``start:end`` of ``file``; rows unknown until parsed) or ``memory``
    (rows ``skip:skip + length`` of the column handed to the task)."""

    index: int
    kind: str
    file: str = ""
    row_groups: tuple[int, ...] = ()
    skip: int = 0
    length: int = -1
    start: int = 0
    end: int = 0


def read_jsonl_piece(piece: Piece) -> pl.DataFrame:
    """Parse one JSONL byte range (raises polars' error on a bad line; the caller names it)."""
    with open(piece.file, "rb") as fh:
        fh.seek(piece.start)
        data = fh.read(piece.end - piece.start)
    if not data.strip():
        return pl.DataFrame()
    return pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)


def text_batches(
    piece: Piece,
    text_column: str,
    *,
    frame: pl.DataFrame | None = None,
    texts: pl.Series | None = None,
) -> Iterator[pl.Series]:
    """The piece's texts as string Series of at most ``SUB_ROWS`` rows / ``SUB_BYTES``.

    ``frame``: the parsed rows of a JSONL piece; ``texts``: the column of a memory piece.
    """
    if piece.kind == "memory":
        assert texts is not None
        col = texts.slice(piece.skip, piece.length)
        for lo in range(0, len(col), SUB_ROWS):
            yield col.slice(lo, SUB_ROWS)
        return
    if piece.kind == "jsonl":
        if frame is None or frame.height == 0:
            return
        col = (
            frame[text_column]
            if text_column in frame.columns
            else pl.Series(text_column, [None] * frame.height, dtype=pl.String)
        ).cast(pl.String)
        for lo in range(0, len(col), SUB_ROWS):
            yield col.slice(lo, SUB_ROWS)
        return
    yield from _parquet_batches(piece, text_column)


def _parquet_batches(piece: Piece, text_column: str) -> Iterator[pl.Series]:
    import pyarrow as pa

    from builder.io_tables import Partition, read_partition_batches

    part = Partition(piece.file, piece.row_groups, piece.skip, piece.length, 0)
    buf: list[pa.Array] = []
    rows = size = 0
    for batch in read_partition_batches(part, [text_column], batch_rows=SUB_ROWS):
        col = batch.column(0)
        buf.append(col)
        rows += len(col)
        size += col.nbytes
        if rows >= SUB_ROWS or size >= SUB_BYTES:
            yield pl.Series(text_column, pa.concat_arrays(buf)).cast(pl.String)
            buf, rows, size = [], 0, 0
    if buf:
        yield pl.Series(text_column, pa.concat_arrays(buf)).cast(pl.String)
