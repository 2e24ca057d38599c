"""The pieces of a dedup input: what one signature task reads, and how it reads it.

A piece is a run of rows in global order: row groups of a Parquet file, a byte range of a
plain JSONL file (cut at line ends, so the worker parses it itself: reading is spread over
the workers instead of a serial conversion in the parent), or a slice of an in-memory
column (``dedup_table``). Pieces are planned from the input and the settings alone (never
from the number of workers), so a rerun after a kill finds the same pieces and the local and
Ray executors compute the same files.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa

from builder.dedup.piece import SUB_BYTES, SUB_ROWS, Piece, read_jsonl_piece, text_batches
from builder.errors import InputError
from builder.io_tables import (
    RowFiles,
    TableSource,
    check_text_dtype,
    compression_of,
    conform,
    find_jsonl_problem,
    require_text_column,
    resolve_inputs,
    table_format,
)

__all__ = [
    "SUB_BYTES",
    "SUB_ROWS",
    "ArrowFilesSource",
    "Piece",
    "check_jsonl_head",
    "jsonl_error",
    "jsonl_pieces",
    "memory_pieces",
    "parquet_pieces",
    "plain_jsonl_inputs",
    "read_jsonl_piece",
    "rows_per_piece",
    "text_batches",
]

#: Input is cut into about this many pieces (fewer when each would be under MIN_ROWS rows),
#: enough to balance the workers of a small machine without depending on their number.
TARGET_PIECES = 8
MIN_ROWS = 2000


def rows_per_piece(n: int, partition_size: int) -> int:
    """At most ``partition_size``, about ``n / TARGET_PIECES``, not below ``MIN_ROWS``."""
    return max(1, min(partition_size, max(MIN_ROWS, -(-n // TARGET_PIECES))))


def plain_jsonl_inputs(path: str | os.PathLike[str]) -> list[Path] | None:
    """The input files when every one is an uncompressed JSONL file (split by bytes), else
    None (Parquet and compressed inputs go through ``open_table``)."""
    files = resolve_inputs(path)
    for f in files:
        if compression_of(f) is not None or table_format(f) != "jsonl":
            return None
    return files


def _line_end_after(fh: io.BufferedReader, pos: int, size: int) -> int:
    """The offset just after the first newline at or after ``pos`` (or ``size``)."""
    fh.seek(pos)
    while pos < size:
        block = fh.read(1 << 16)
        if not block:
            return size
        k = block.find(b"\n")
        if k >= 0:
            return pos + k + 1
        pos += len(block)
    return size


def jsonl_pieces(
    files: Sequence[Path], partition_size: int, first_index: int = 0
) -> tuple[list[Piece], int]:
    """Byte ranges of about ``rows_per_piece`` lines each (line length estimated from the
    first MiB of each file), every range ending just after a newline; and the estimated
    number of rows."""
    pieces: list[Piece] = []
    estimate = 0
    for f in files:
        size = f.stat().st_size
        path = str(f.resolve())  # tasks may run in another directory (Ray workers)
        with open(f, "rb") as fh:
            head = fh.read(1 << 20)
            lines = max(1, head.count(b"\n"))
            per_line = max(1, len(head) // lines)
            estimate += size // per_line + 1
            step = max(1, rows_per_piece(size // per_line, partition_size) * per_line)
            start = 0
            while start < size:
                end = size if start + step >= size else _line_end_after(fh, start + step, size)
                pieces.append(Piece(first_index + len(pieces), "jsonl", path, start=start, end=end))
                start = end
    return pieces, estimate


def check_jsonl_head(files: Sequence[Path], text_column: str) -> None:
    """Fail early, as the serial reader did, when the first lines lack a usable text column.

    Only the first complete lines of each file are parsed; a column absent there but present
    later is still found by the pieces (and the unified schema is checked again at the end).
    """
    for f in files:
        if f.stat().st_size == 0:
            raise InputError("file is empty", file=f, hint="give a file with at least one row")
        with open(f, "rb") as fh:
            head = fh.read(1 << 16)
        cut = head.rfind(b"\n")
        chunk = head if cut < 0 else head[: cut + 1]
        if not chunk.strip():
            continue
        try:
            frame = pl.read_ndjson(io.BytesIO(chunk), infer_schema_length=None)
        except Exception as exc:  # noqa: BLE001 - polars' errors carry no line number
            raise jsonl_error(f, exc) from None
        if text_column in frame.columns:
            check_text_dtype(frame.schema[text_column], text_column, file=f)
        elif os.path.getsize(f) <= len(chunk):
            require_text_column(frame.columns, text_column, file=f, option="--text-column")


def jsonl_error(path: str | os.PathLike[str], exc: BaseException | str) -> InputError:
    """The user error for an unparsable JSONL file: its first bad line, found by a scan."""
    found = find_jsonl_problem(path)
    if found is not None:
        return found
    return InputError(f"cannot read JSONL: {exc}", file=path, hint="check that it is JSON lines")


def parquet_pieces(source: TableSource, partition_size: int) -> list[Piece]:
    """Runs of row groups (``TableSource.partitions``) of about ``rows_per_piece`` rows."""
    size = rows_per_piece(source.num_rows, partition_size)
    return [
        Piece(i, "parquet", str(Path(p.file).resolve()), p.row_groups, p.skip, p.length)
        for i, p in enumerate(source.partitions(size, TARGET_PIECES))
    ]


def memory_pieces(n: int, partition_size: int) -> list[Piece]:
    """Slices of an in-memory column."""
    size = rows_per_piece(n, partition_size)
    return [
        Piece(i, "memory", skip=lo, length=min(size, n - lo))
        for i, lo in enumerate(range(0, n, size))
    ]


@dataclass
class ArrowFilesSource(RowFiles):
    """The parsed rows of JSONL pieces, one Arrow IPC file each, read as one table.

    Same reading interface as ``io_tables.TableSource`` (what dedup uses of it): IPC files
    are written and read back without encoding (memory-mapped), which is why the pieces
    keep their parsed rows in them rather than in Parquet.
    """

    @classmethod
    def open(cls, files: list[Path], original: list[Path]) -> ArrowFilesSource:
        schemas, counts = [], []
        for f in files:
            reader = pa.ipc.open_file(pa.memory_map(str(f)))
            schemas.append(reader.schema)
            counts.append(
                sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
            )
        try:
            schema = pa.unify_schemas(schemas, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InputError(
                f"input rows have incompatible values in one field: {exc}",
                file=original[0],
                hint="give every row the same type for each field",
            ) from None
        return cls(files, original, schema, counts)

    def iter_batches(
        self, columns: Sequence[str] | None = None, *, batch_rows: int = 8192
    ) -> Iterator[pa.RecordBatch]:
        """Every row in order, as batches of at most ``batch_rows`` conformed to the schema."""
        cols = list(columns) if columns is not None else self.columns
        target = pa.schema([self.schema.field(c) for c in cols])
        for f in self.files:
            reader = pa.ipc.open_file(pa.memory_map(str(f)))
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                for lo in range(0, batch.num_rows, batch_rows):
                    yield conform(batch.slice(lo, batch_rows), target)

    def read_columns(self, columns: Sequence[str]) -> pl.DataFrame:
        """Small columns (ids, flags, paths) for every row, as one DataFrame."""
        cols = [c for c in columns if c in self.columns]
        if not cols:
            return pl.DataFrame()
        target = pa.schema([self.schema.field(c) for c in cols])
        batches = list(self.iter_batches(cols, batch_rows=1 << 30))
        return pl.from_arrow(pa.Table.from_batches(batches, target))  # type: ignore[return-value]
