"""Parquet partitions of bounded size: how stages read and write their data.

A stage's output is a directory of ``part-00000.parquet``, ``part-00001.parquet``, ... each
written atomically (temp file, fsync, rename) and bounded by a row count and a byte size, so
memory stays flat in corpus size: a stage holds at most one partition (one batch) at a time.
``PartitionWriter.max_rows_held`` and ``iter_batches``' ``batch_rows`` make the bound
testable by counting rows rather than timing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from builder.util.files import atomic_write

PART_RE = re.compile(r"^part-(\d{5,})\.parquet$")


def part_name(index: int) -> str:
    """``part-00007.parquet`` for 7."""
    return f"part-{index:05d}.parquet"


def list_parts(directory: str | os.PathLike[str]) -> list[Path]:
    """The ``part-*.parquet`` files of a directory in index order (none if it is missing)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := PART_RE.match(p.name))]
    return [p for _i, p in sorted(found)]


def _vector(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_fixed_size_list(t)) and pa.types.is_floating(
        t.value_type
    )


def write_table(table: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write one Parquet file atomically (zstd).

    Vector columns (lists of floats: embeddings) get neither a dictionary nor min/max
    statistics: every value differs, so the dictionary is built and thrown away, and the
    two took ~70% of the CPU of writing an embeddings partition (and compress worse). Nor
    are they compressed: zstd saves ~9% of their bytes for twice the CPU of writing them,
    and again for every read (semantic dedup, the diversity summary)."""
    names = [f.name for f in table.schema if not _vector(f.type)]
    options: dict[str, Any] = {"compression": "zstd"}
    if len(names) < table.num_columns:
        options = {
            "use_dictionary": names,
            "write_statistics": names,
            "compression": {f.name: "zstd" if f.name in names else "none" for f in table.schema},
        }
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, **options))


def iter_batches(
    paths: Sequence[Path] | Path,
    *,
    batch_rows: int,
    columns: Sequence[str] | None = None,
) -> Iterator[pa.Table]:
    """Tables of at most ``batch_rows`` rows read from ``paths`` in order (never more)."""
    files = list_parts(paths) if isinstance(paths, Path) and paths.is_dir() else paths
    if isinstance(files, Path):
        files = [files]
    for path in files:
        # No pre-buffering: with it, pyarrow reads the wanted columns of every row group of
        # the file before the first batch (~200 MB of compressed text for a 200k-row file).
        pf = pq.ParquetFile(path, pre_buffer=False)
        for batch in pf.iter_batches(batch_size=max(1, batch_rows), columns=columns):
            yield pa.Table.from_batches([batch])


def count_rows(paths: Iterable[Path]) -> int:
    """Rows in these Parquet files (from their footers; no data is read)."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


class PartitionWriter:
    """Append rows to ``directory/part-NNNNN.parquet`` files of bounded rows and bytes.

    Rows are buffered until ``max_rows`` or about ``max_bytes`` are held, then written as
    one partition, atomically. ``close`` writes the rest and removes partitions left over
    from an earlier, larger run into the same directory, so the directory holds exactly
    this writer's parts. ``max_rows_held`` is the most rows ever buffered at once.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        schema: pa.Schema,
        *,
        max_rows: int,
        max_bytes: int,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.max_rows = max(1, max_rows)
        self.max_bytes = max(1, max_bytes)
        self.parts: list[Path] = []
        self.rows = 0
        self.max_rows_held = 0
        self._buffer: list[pa.Table] = []
        self._held_rows = 0
        self._held_bytes = 0

    def write_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append row dicts (converted with this writer's schema)."""
        if rows:
            self.write(pa.Table.from_pylist(list(rows), schema=self.schema))

    def write(self, table: pa.Table) -> None:
        """Append a table; it is split so no partition exceeds the row bound."""
        if table.num_rows == 0:
            return
        table = table.select(self.schema.names).cast(self.schema)
        start = 0
        while start < table.num_rows:
            take = min(self.max_rows - self._held_rows, table.num_rows - start)
            piece = table.slice(start, take)
            start += take
            self._buffer.append(piece)
            self._held_rows += piece.num_rows
            self._held_bytes += piece.nbytes
            self.max_rows_held = max(self.max_rows_held, self._held_rows)
            if self._held_rows >= self.max_rows or self._held_bytes >= self.max_bytes:
                self.flush()

    def flush(self) -> None:
        """Write the buffered rows as the next partition (nothing when empty)."""
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer)
        path = self.directory / part_name(len(self.parts))
        write_table(table, path)
        self.parts.append(path)
        self.rows += table.num_rows
        self._buffer, self._held_rows, self._held_bytes = [], 0, 0

    def close(self) -> list[Path]:
        """Flush, drop stale parts with higher indexes, and return this writer's parts."""
        self.flush()
        keep = {p.name for p in self.parts}
        for p in list_parts(self.directory):
            if p.name not in keep:
                p.unlink()
        if not self.parts:
            # An empty output is still an output: one empty partition keeps the schema.
            path = self.directory / part_name(0)
            write_table(self.schema.empty_table(), path)
            self.parts.append(path)
        return list(self.parts)


def lazy_batches(lazy: pl.LazyFrame, batch_rows: int) -> Iterator[pl.DataFrame]:
    """``lazy``'s rows in order, in frames of at most ``batch_rows`` rows, each its own
    streaming query over a slice (Parquet scans skip the row groups before it), so one
    batch is held at a time. Polars' ``collect_batches`` runs ahead of a slow consumer and
    buffers what it read: over 200k documents in 20k-row batches it peaked at 517 MB
    against 252 MB this way (~0.4 s more per batch)."""
    batch_rows = max(1, batch_rows)
    total = int(lazy.select(pl.len()).collect().item())
    for offset in range(0, total, batch_rows):
        yield lazy.slice(offset, batch_rows).collect(engine="streaming")
