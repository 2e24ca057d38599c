"""A table's per-row columns read a batch at a time: never a value per row of the corpus.

Dedup and decontam need a table's ids for three things: to check that they are present and
unique, to flag the rows whose ids are in a small set (the rows that hit a benchmark), and to
name a few rows by position (the members of duplicate clusters, the rows of hits). Reading the
whole id column for that held ~30-60 bytes a document in the main process (plus a hash table
as large for the uniqueness check), so memory grew with the corpus. Here each is one pass over
batches of ``batch_rows`` rows; what stays is what the caller asked for, and for the
uniqueness check a 64-bit hash of each id, held up to ``keygroups.KEY_ROWS`` of them and
spilled to disk past that (``keygroups.EqualKeys``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import polars as pl
import pyarrow as pa

from builder.dedup.keygroups import EqualKeys
from builder.errors import InputError

#: Rows of a column read at once.
BATCH_ROWS = 65_536


class BatchSource(Protocol):
    """What is read here of a table source (``io_tables.TableSource``,
    ``dedup.source.ArrowFilesSource``)."""

    def iter_batches(
        self, columns: list[str] | None = None, *, batch_rows: int = ...
    ) -> Iterator[pa.RecordBatch]: ...


def frame_batches(
    source: BatchSource, columns: list[str], batch_rows: int | None = None
) -> Iterator[pl.DataFrame]:
    """``columns`` of every row in order, ``batch_rows`` (default ``BATCH_ROWS``) rows at a
    time."""
    for batch in source.iter_batches(columns, batch_rows=batch_rows or BATCH_ROWS):
        yield pl.DataFrame([pl.Series(c, batch.column(i)) for i, c in enumerate(columns)])


def column_batches(
    source: BatchSource, column: str, batch_rows: int | None = None
) -> Iterator[pl.Series]:
    """``frame_batches`` of one column, as Series."""
    for frame in frame_batches(source, [column], batch_rows):
        yield frame.to_series()


#: The seed of the ids' 64-bit hashes (Polars' ``hash``: the same within a process).
HASH_SEED = 0x5EED


def id_key(column: str) -> pl.Expr:
    """The 64-bit hash of each id that the uniqueness checks compare (equal ids, equal
    hashes; equal hashes are then compared as ids)."""
    return pl.col(column).hash(seed=HASH_SEED)


def _hash(ids: pl.Series) -> np.ndarray:
    return ids.to_frame().select(id_key(ids.name)).to_series().to_numpy()


class IdCheck:
    """``plan.check_ids`` over batches of ids: present in every row, and unique.

    Empty ids are counted as the batches come. For uniqueness each id gives a 64-bit hash to
    ``keygroups.EqualKeys`` (bounded memory: past ``KEY_ROWS`` hashes they spill to
    ``spill_dir``); only the rows whose hash another row shares (a repeated id, or by chance
    two ids with one hash) have their ids read again to tell which (``again``: the same
    batches anew).
    """

    def __init__(
        self,
        column: str,
        file: str | os.PathLike[str] | None,
        hasher: Callable[[pl.Series], np.ndarray] = _hash,
        *,
        spill_dir: str | os.PathLike[str] | None = None,
        budget_rows: int | None = None,
    ) -> None:
        self.column = column
        self.file = file
        self.hasher = hasher
        self.rows = 0
        self.keys = EqualKeys(1, spill_dir=spill_dir, budget_rows=budget_rows)
        self._nulls = 0
        self._first_null: int | None = None

    def add(self, ids: pl.Series) -> None:
        nulls = ids.null_count()
        if nulls:
            if self._first_null is None:
                self._first_null = self.rows + int(ids.is_null().arg_true()[0])
            self._nulls += nulls
        elif self._first_null is None:
            self.keys.add(np.asarray(self.hasher(ids), dtype=np.uint64))
        self.rows += len(ids)

    def finish(self, again: Callable[[], Iterator[pl.Series]]) -> None:
        """Raise ``InputError`` for the first problem: empty ids, else a repeated one."""
        if self._first_null is not None:
            self.keys.close()
            raise InputError(
                f"id column '{self.column}' is empty in {self._nulls} row(s), first at row "
                f"{self._first_null}",
                file=self.file,
                hint="fill the ids, or pass --id-column of another column (a missing id column "
                "gets ids from the text)",
            )
        met, _ = self.keys.groups()
        if len(met) == 0:
            return
        # The rows whose hash is shared, with their ids: the only ones that can repeat.
        found: list[pl.DataFrame] = []
        offset = 0
        for ids in again():
            lo, hi = np.searchsorted(met, [offset, offset + len(ids)])
            if hi > lo:
                found.append(
                    pl.DataFrame({"row": met[lo:hi], "id": ids.gather(met[lo:hi] - offset)})
                )
            offset += len(ids)
        rows = pl.concat(found).filter(pl.col("id").is_duplicated()).sort("row")
        if rows.height == 0:  # only hashes met: the ids differ
            return
        value = rows["id"][0]
        first_two = rows.filter(pl.col("id") == value)["row"].head(2).to_list()
        raise InputError(
            f"id column '{self.column}' has {rows.height} rows with repeated ids "
            f"(e.g. {value!r} at rows {first_two[0]} and {first_two[1]})",
            file=self.file,
            hint="ids must be unique; drop the column to get ids from the text",
        )


def check_source_ids(
    source: BatchSource,
    column: str,
    file: str | os.PathLike[str] | None,
    spill_dir: str | os.PathLike[str] | None = None,
) -> pl.DataType:
    """Check ``source``'s ids a batch at a time (``IdCheck``); their Polars type."""
    check = IdCheck(column, file, spill_dir=spill_dir)
    dtype: pl.DataType = pl.String
    for ids in column_batches(source, column):
        check.add(ids)
        dtype = ids.dtype
    check.finish(lambda: column_batches(source, column))
    return dtype


def take(source: BatchSource, columns: list[str], rows: np.ndarray) -> pl.DataFrame:
    """``columns``' values at positions ``rows`` (any order, repeats allowed), in one pass
    over the columns a batch at a time, keeping only those rows."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    wanted = rows[order]
    parts: list[pl.DataFrame] = []
    offset = 0
    for frame in frame_batches(source, columns):
        lo, hi = np.searchsorted(wanted, [offset, offset + frame.height])
        parts.append(frame[wanted[lo:hi] - offset] if hi > lo else frame.clear())
        offset += frame.height
        if hi == len(wanted):
            break
    if sum(p.height for p in parts) != len(rows):
        raise IndexError(f"take: rows beyond the table's {offset} rows")
    if len(parts) == 0:  # a table without rows, asked for none
        return pl.DataFrame({c: pl.Series(c, [], dtype=pl.String) for c in columns})
    inverse = np.empty(len(rows), dtype=np.int64)
    inverse[order] = np.arange(len(rows), dtype=np.int64)
    return pl.concat(parts)[inverse]


def names_on_disk(
    source: BatchSource, id_column: str, verified: str | None = "verified"
) -> Callable[[np.ndarray], tuple[pl.Series, pl.Series | None]]:
    """What dedup's plan asks of the rows it names (``plan.RowNames``): their ids and
    ``verified`` flags (when the table has that column), read together at those rows only."""
    flags = verified if verified in getattr(source, "columns", []) else None

    def names(rows: np.ndarray) -> tuple[pl.Series, pl.Series | None]:
        got = take(source, [id_column] if flags is None else [id_column, flags], rows)
        return got[id_column], None if flags is None else got[flags]

    return names


def node_rates_of(
    source: BatchSource, flags_of: Callable[[int, int], dict[str, np.ndarray]], flags: list[str]
) -> pl.DataFrame:
    """``diversity.node_rates`` of a table's ``taxonomy_path`` column, read a batch at a
    time, with ``flags_of(lo, hi)``: the flags (by name) of rows ``lo..hi``. Never a path per
    document at once."""
    from builder.diversity import node_rates_batches

    def batches() -> Iterator[pl.DataFrame]:
        offset = 0
        for paths in column_batches(source, "taxonomy_path"):
            yield pl.DataFrame({"taxonomy_path": paths, **flags_of(offset, offset + len(paths))})
            offset += len(paths)
        if offset == 0:  # no rows: the empty table's rates
            empty = pl.Series("taxonomy_path", [], dtype=pl.String)
            yield pl.DataFrame({"taxonomy_path": empty, **flags_of(0, 0)})

    return node_rates_batches(batches(), flags)
