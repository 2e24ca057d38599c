"""Assembly's shards: the external sort by id, the token counts (tasks over slices of the
input rows, mapped by the build's executor, looked up by each row's position), shards cut by
rows and bytes and written row group by row group (memory bounded by ``[output]
row_group_rows``, not the shard size), and the running counts for the manifest."""

from __future__ import annotations

import functools
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from builder.assemble_inputs import _arrow_schema
from builder.io_tables import Partition, read_partition_batches
from builder.tokens import count_tokens
from builder.util.files import atomic_write, file_sha256

if TYPE_CHECKING:  # pragma: no cover
    from builder.dedup.engine import TaskMap
    from builder.settings.output import OutputSettings

#: Folder of the corpus shards in a run directory.
DOCUMENTS_DIR = "documents"
#: Bytes counted per row on top of its text when bounding shard size (ids, hashes, names...).
ROW_OVERHEAD_BYTES = 512
#: Rows per record batch read back from the sorted scratch file.
READ_BATCH_ROWS = 4096
#: Column carried through the sort when the tokens are counted over the input file: each
#: row's position in it, where its count is in the counts file (dropped before the shards).
ROW_COLUMN = "__assemble_row"


@dataclass(frozen=True)
class ShardInfo:
    """One written file: its path relative to the run directory, rows, size and sha256."""

    path: str
    rows: int
    bytes: int
    sha256: str
    first_id: str | None = None
    last_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "first_id": self.first_id,
            "last_id": self.last_id,
        }


#: Fixed, deterministic Parquet writer options of every file assembly writes.
_PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": True,
    "write_statistics": True,
    "version": "2.6",
    "data_page_version": "1.0",
}


def _write_parquet(table: pa.Table, path: Path, *, row_group_rows: int, level: int) -> None:
    """Write one Parquet file atomically with fixed, deterministic writer options."""
    atomic_write(
        path,
        lambda tmp: pq.write_table(
            table,
            tmp,
            row_group_size=row_group_rows,
            compression_level=level,
            **_PARQUET_OPTIONS,
        ),
    )


class _Counts:
    """Running totals over the shards, for the manifest and the dataset card."""

    def __init__(self) -> None:
        self.documents = 0
        self.tokens = 0
        self.max_rows = 0
        self.by: dict[str, Counter[str]] = {}
        self.tokens_by: dict[str, Counter[str]] = {}

    def add(self, df: pl.DataFrame) -> None:
        self.documents += df.height
        self.max_rows = max(self.max_rows, df.height)
        self.tokens += int(df["n_tokens"].sum() or 0)
        for key in ("discipline", "kind", "model", "template", "verified"):
            agg = (
                df.select(pl.col(key).cast(pl.String).fill_null("null").alias("k"), "n_tokens")
                .group_by("k")
                .agg(pl.len().alias("n"), pl.col("n_tokens").sum().alias("t"))
            )
            docs = self.by.setdefault(key, Counter())
            toks = self.tokens_by.setdefault(key, Counter())
            for k, n, t in agg.iter_rows():
                docs[k] += n
                toks[k] += int(t or 0)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"documents": self.documents, "tokens": self.tokens}
        for key, docs in sorted(self.by.items()):
            toks = self.tokens_by[key]
            out[f"by_{key}"] = {
                k: {"documents": docs[k], "tokens": toks[k]} for k in sorted(docs, key=str)
            }
        return out


# ---------------------------------------------------------------------------------------------
# Sharding


def _row_bytes(df: pl.DataFrame) -> np.ndarray:
    return (
        df.select(pl.col("text").str.len_bytes().cast(pl.Int64) + ROW_OVERHEAD_BYTES)
        .to_series()
        .to_numpy()
    )


def _shard_pieces(
    batches: Iterable[pl.DataFrame], max_rows: int, max_bytes: int
) -> Iterator[tuple[int, pl.DataFrame]]:
    """Cut sorted batches into shards of at most ``max_rows`` rows and ``max_bytes`` bytes (a
    single row bigger than ``max_bytes`` gets a shard of its own): ``(shard number, piece)``
    pairs in order, so a shard is written piece by piece and never held whole."""
    shard = 0
    rows = 0
    size = 0
    for batch in batches:
        sizes = _row_bytes(batch)
        start = 0
        while start < batch.height:
            cum = np.cumsum(sizes[start : start + max_rows - rows])
            fit = int(np.searchsorted(cum, max_bytes - size, side="right"))
            if fit == 0 and rows:  # the next row does not fit: close this shard first
                shard, rows, size = shard + 1, 0, 0
                continue
            fit = max(fit, 1)  # an oversized row gets a shard of its own
            yield shard, batch.slice(start, fit)
            rows += fit
            size += int(cum[fit - 1])
            start += fit
            if rows >= max_rows or fit < len(cum):
                shard, rows, size = shard + 1, 0, 0


def _row_groups(pieces: Iterable[pl.DataFrame], rows: int) -> Iterator[pl.DataFrame]:
    """The pieces regrouped into frames of exactly ``rows`` rows (the last one shorter)."""
    held: list[pl.DataFrame] = []
    n = 0
    for piece in pieces:
        while piece.height:
            take = min(rows - n, piece.height)
            held.append(piece.slice(0, take))
            n += take
            piece = piece.slice(take)
            if n == rows:
                yield pl.concat(held, rechunk=True)
                held, n = [], 0
    if n:
        yield pl.concat(held, rechunk=True)


def _count_slice(part: Partition, threads: int | None = None) -> tuple[int, np.ndarray]:
    """cl100k counts of one slice of the sorted documents (one of ``count_tokens_file``'s
    tasks, wherever it runs): ``(its first row, the counts in row order)``. Reads only the
    text column of those rows; the tokenizer is loaded once per process (``encoding``).
    ``threads``: tiktoken threads (None: ``count_tokens``' default)."""
    counts: list[int] = []
    for batch in read_partition_batches(part, ["text"], batch_rows=READ_BATCH_ROWS):
        counts.extend(count_tokens(batch.column(0).to_pylist(), threads=threads))
    return part.offset, np.asarray(counts, dtype=np.int64)


def count_tokens_file(source: Path, dest: Path, *, rows: int, mapper: TaskMap | None = None) -> int:
    """Write the cl100k token count of every row of ``source`` (a Parquet file with a
    ``text`` column) to ``dest``, as int64 in row order; return the rows.

    One task per slice of about ``rows`` rows (along row groups; a row group of more rows
    is split into slices of about ``rows``, each decoding the group's texts: cheap next to
    tokenizing them), mapped by ``mapper`` (an executor's ``map_tasks``: Ray tasks or local
    processes; ``source`` and ``dest`` must then be on a filesystem the workers see) or run
    here. Each task returns its slice's counts and they go to their place in ``dest`` as they
    arrive, so memory holds one slice's counts, whatever the corpus size and the order the
    tasks finish in.

    With several slices the tasks are the parallelism: each counts on one thread (tiktoken's
    batch threads on top of one task per core cost ~30% more CPU for the same counts).
    """
    from builder.io_tables import open_table

    n = pq.ParquetFile(source).metadata.num_rows
    with dest.open("wb") as out:
        if not n:
            return 0
        table = open_table(source, text_column="text")
        parts = list(table.partitions(rows, workers=-(-n // max(1, rows))))
        task = functools.partial(_count_slice, threads=1 if len(parts) > 1 else None)
        results = mapper(task, parts) if mapper is not None else map(task, parts)
        written = 0
        for offset, counts in results:
            out.seek(offset * 8)
            out.write(counts.tobytes())
            written += len(counts)
    if written != n:  # pragma: no cover - every slice maps to one result
        raise RuntimeError(f"token counts for {written} of {n} rows")
    return n


def copy_token_counts(source: Path, dest: Path) -> bool:
    """Write ``source``'s own ``n_tokens`` (a Parquet file's column) to ``dest`` as
    ``count_tokens_file`` writes counts, a record batch at a time, when every row has one
    (non-negative); else return False (the rows are counted then, over ``dest``)."""
    pf = pq.ParquetFile(source)
    if "n_tokens" not in pf.schema_arrow.names:
        return False
    with dest.open("wb") as out:
        for batch in pf.iter_batches(batch_size=READ_BATCH_ROWS, columns=["n_tokens"]):
            column = batch.column(0)
            if column.null_count or (len(column) and pc.min(column).as_py() < 0):
                return False
            out.write(column.cast(pa.int64()).to_numpy().astype(np.int64, copy=False).tobytes())
    return True


class Background:
    """``fn()`` on a background thread, so the caller can do other work meanwhile (assembly
    sorts the rows while the token tasks and the diversity summary run). ``join()`` waits
    and returns ``fn``'s result or re-raises its error; ``seconds`` is how long it ran."""

    def __init__(self, fn: Callable[[], Any], name: str) -> None:
        import threading

        self.seconds = 0.0
        self._result: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            t0 = time.perf_counter()
            try:
                self._result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to join()'s caller
                self._error = exc
            finally:
                self.seconds = time.perf_counter() - t0

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def join(self) -> Any:
        """Wait for ``fn``; return its result. Raises its error."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result

    def wait(self) -> None:
        """Wait for ``fn`` and drop its outcome (the caller is failing for another reason
        and must not leave it writing into the scratch files it removes)."""
        self._thread.join()


class TokenCounting(Background):
    """``count_tokens_file`` on a background thread: the thread mostly waits for the
    executor's workers (or, without a mapper, runs tiktoken, which releases the GIL).
    ``join()`` waits, re-raises the counting's error, if any, and returns its seconds."""

    def __init__(
        self, source: Path, dest: Path, *, rows: int, mapper: TaskMap | None = None
    ) -> None:
        super().__init__(
            functools.partial(count_tokens_file, source, dest, rows=rows, mapper=mapper),
            "assemble-tokens",
        )

    def join(self) -> float:
        """Wait for the counts; return the seconds they took. Raises the counting's error."""
        super().join()
        return self.seconds


def with_token_counts(batches: Iterable[pl.DataFrame], counts: Path) -> Iterator[pl.DataFrame]:
    """The batches with their ``n_tokens`` column set from ``counts`` (``count_tokens_file``'s
    int64 counts of the input rows, in input order): each row's count is looked up by its
    ``ROW_COLUMN`` (which is then dropped) in a memory map of the file, so memory holds one
    batch's counts however many rows there are."""
    table: np.ndarray | None = None
    for df in batches:
        if table is None and df.height:
            table = np.memmap(counts, dtype=np.int64, mode="r")
        rows = df[ROW_COLUMN].to_numpy()
        n = table[rows] if table is not None else np.zeros(0, dtype=np.int64)
        yield df.drop(ROW_COLUMN).with_columns(pl.Series("n_tokens", n, dtype=pl.Int64))
    del table


def numbered_batches(
    path: Path, rows: int, prepare: Callable[[pl.DataFrame], pl.DataFrame] | None = None
) -> Iterator[pl.DataFrame]:
    """The rows of the Parquet file ``path``, a record batch of ``rows`` rows at a time, each
    given its position in the file as a last column ``ROW_COLUMN`` (int64) and then passed
    to ``prepare`` (which may drop rows: the positions stay those of the file)."""
    offset = 0
    pf = pq.ParquetFile(path, pre_buffer=False)
    for rb in pf.iter_batches(batch_size=rows, use_threads=False):
        df: pl.DataFrame = pl.from_arrow(rb)  # type: ignore[assignment]
        pos = np.arange(offset, offset + df.height, dtype=np.int64)
        offset += df.height
        df = df.with_columns(pl.Series(ROW_COLUMN, pos, dtype=pl.Int64))
        yield prepare(df) if prepare is not None else df


@dataclass
class SortedRows:
    """The rows of ``bucket_by_id``: range buckets of ascending ids in scratch files (each
    sorted when it is read) or, for an input of at most one bucket, the sorted table."""

    schema: pl.Schema  # the rows' columns (with ``ROW_COLUMN``)
    rows: int
    buckets: list[Path]
    table: pa.Table | None = None

    def frames(self, batch_rows: int = READ_BATCH_ROWS) -> Iterator[pl.DataFrame]:
        """The rows in id order, ``batch_rows`` at a time; one bucket is held at a time and
        its file is removed once read."""
        if self.table is not None:
            tables: Iterable[pa.Table] = [self.table]
        else:
            tables = self._bucket_tables()
        for table in tables:
            for rb in table.to_batches(max_chunksize=batch_rows):
                yield pl.from_arrow(rb)  # type: ignore[misc]

    def _bucket_tables(self) -> Iterator[pa.Table]:
        for path in self.buckets:
            with pa.OSFile(str(path)) as source:
                table = pa.ipc.open_stream(source).read_all().sort_by("id")
            path.unlink()
            yield table


def _split_points(pf: pq.ParquetFile, n: int, max_rows: int) -> np.ndarray:
    """Ids cutting ``pf``'s rows into ranges of about ``max_rows / 2`` rows (room for skew),
    from a sample of about 20k of its ids (the id column alone is read)."""
    step = max(1, n // 20_000)
    sample: list[str] = []
    seen = 0
    for batch in pf.iter_batches(batch_size=max_rows, columns=["id"], use_threads=False):
        ids = batch.column(0).to_pylist()
        first = (-seen) % step
        sample.extend(ids[first::step])
        seen += len(ids)
    sample.sort()
    buckets = max(2, -(-2 * n // max_rows))
    return np.array(
        sorted({sample[len(sample) * i // buckets] for i in range(1, buckets)}), dtype=object
    )


def bucket_by_id(
    source: Path,
    scratch: Path,
    schema: pl.Schema,
    *,
    max_rows: int,
    prepare: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
) -> SortedRows:
    """The first pass of an external sort by id of the Parquet file ``source``, holding about
    ``max_rows`` rows at a time: its rows (``numbered_batches``: with their position in the
    file as ``ROW_COLUMN``, then ``prepare``, cast to ``schema``) are streamed once into
    range buckets of about ``max_rows / 2`` rows each (lz4 Arrow IPC files in ``scratch``;
    split points from a sample of the ids). ``SortedRows.frames`` sorts each bucket as it
    reads it; the buckets cover ascending id ranges, so the rows come in id order. An input
    of at most ``max_rows`` rows is sorted in memory."""
    pf = pq.ParquetFile(source, pre_buffer=False)
    n = pf.metadata.num_rows
    arrow = pl.DataFrame(schema=schema).to_arrow().schema
    # read a few thousand rows at a time: a batch is held in ~4 copies while it is
    # converted and split (8k rows of the bench: ~200 MB of RSS, 4k: ~120)
    read_rows = min(max_rows, READ_BATCH_ROWS)
    batches = (df.to_arrow().cast(arrow) for df in numbered_batches(source, read_rows, prepare))
    if n <= max_rows:
        table = pa.concat_tables([arrow.empty_table(), *batches]).sort_by("id")
        return SortedRows(schema, table.num_rows, [], table)
    splits = _split_points(pf, n, max_rows)
    paths = [scratch / f"bucket-{i:05d}.arrow" for i in range(len(splits) + 1)]
    # Arrow IPC streams (lz4): each write is serialised at once. A Parquet writer kept the
    # slices it was given alive, and with them the whole batch each was cut from: the open
    # buckets held ~300 MB at 200k documents.
    writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    rows = 0
    try:
        for table in batches:
            rows += table.num_rows
            ids = np.array(table.column("id").to_pylist(), dtype=object)
            which = np.searchsorted(splits, ids, side="right")
            # one gather puts each bucket's rows together, then a slice per bucket
            order = np.argsort(which, kind="stable")
            grouped = table.take(pa.array(order))
            bounds = np.searchsorted(which[order], np.arange(len(paths) + 1), side="left")
            for b in np.flatnonzero(np.diff(bounds)).tolist():
                part = grouped.slice(int(bounds[b]), int(bounds[b + 1] - bounds[b]))
                if b not in writers:
                    writers[b] = pa.ipc.new_stream(str(paths[b]), arrow, options=options)
                writers[b].write_table(part)
    finally:
        for w in writers.values():
            w.close()
    return SortedRows(schema, rows, [p for b, p in enumerate(paths) if b in writers])


def _spill_group(rows: int) -> int:
    """Rows per row group of a scratch file: at most ``rows`` and 10k."""
    return max(1, min(rows, 10_000))


def spill(lf: pl.LazyFrame, path: Path, *, rows: int) -> Path:
    """``lf``'s rows written to the lz4 Parquet file ``path`` by Polars' streaming sink, in
    row groups of ``_spill_group(rows)``: the sink buffers a whole row group (~250k rows by
    default), so memory follows the group size."""
    lf.sink_parquet(path, compression="lz4", row_group_size=_spill_group(rows))
    return path


def sort_by_id(lf: pl.LazyFrame, dest: Path, scratch: Path, *, max_rows: int) -> int:
    """Write ``lf`` to ``dest`` (lz4 Parquet) sorted by id, holding about ``max_rows`` rows
    at a time (``bucket_by_id`` over the rows spilled to a scratch file). Returns the rows."""
    unsorted = spill(lf, scratch / "unsorted.parquet", rows=max_rows)
    group = _spill_group(max_rows)
    schema = lf.collect_schema()
    arrow = pl.DataFrame(schema=schema).to_arrow().schema
    rows = bucket_by_id(
        unsorted, scratch, schema, max_rows=max_rows, prepare=lambda df: df.drop(ROW_COLUMN)
    )
    unsorted.unlink()
    with pq.ParquetWriter(dest, arrow, compression="lz4") as out:
        for df in rows.frames():
            out.write_table(df.to_arrow().cast(arrow), row_group_size=group)
    return rows.rows


def _write_shard(
    groups: Iterator[pl.DataFrame],
    run: Path,
    index: int,
    schema: pa.Schema,
    row_group_rows: int,
    level: int,
    counts: _Counts | None = None,
) -> ShardInfo:
    """Write one shard from its row groups (each written as it comes, then dropped), with
    the writer options of ``_write_parquet``, so the bytes equal writing the whole table."""
    rel = f"{DOCUMENTS_DIR}/part-{index:05d}.parquet"
    path = run / rel
    seen = {"rows": 0, "first": None, "last": None}

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema, compression_level=level, **_PARQUET_OPTIONS) as w:
            for df in groups:
                w.write_table(df.to_arrow().cast(schema), row_group_size=row_group_rows)
                if not df.height:
                    continue
                if seen["first"] is None:
                    seen["first"] = df["id"][0]
                seen["last"] = df["id"][-1]
                seen["rows"] += df.height
                if counts is not None:
                    counts.add(df)

    atomic_write(path, write)
    return ShardInfo(
        rel,
        int(seen["rows"]),  # type: ignore[arg-type]
        path.stat().st_size,
        file_sha256(path),
        seen["first"],
        seen["last"],
    )


def write_documents(
    rows: SortedRows,
    tokens_path: Path,
    run: Path,
    out: OutputSettings,
    *,
    after_shard: Callable[[], Any] = lambda: None,
) -> tuple[list[ShardInfo], _Counts, pa.Schema]:
    """The corpus shards under ``run/documents`` (made if missing) from the id-sorted rows
    and their token counts (``with_token_counts``), cut at ``out``'s shard limits and written
    one row group at a time (memory is bounded by ``row_group_rows`` and a bucket of the
    sort, not the shard size). ``after_shard`` runs after each shard is in place. Returns
    the shards, the counts of what they hold and the rows' Arrow schema."""
    schema = pl.Schema({k: v for k, v in rows.schema.items() if k != ROW_COLUMN})
    arrow_schema = _arrow_schema(schema)
    counts = _Counts()
    shards: list[ShardInfo] = []
    (run / DOCUMENTS_DIR).mkdir(exist_ok=True)
    max_bytes = int(out.shard_max_mb * 1024 * 1024)
    counted = with_token_counts(rows.frames(), tokens_path)
    pieces = _shard_pieces(counted, out.shard_max_rows, max_bytes)
    for i, shard_pieces in itertools.groupby(pieces, key=lambda p: p[0]):
        groups = _row_groups((piece for _i, piece in shard_pieces), out.row_group_rows)
        shards.append(
            _write_shard(
                groups, run, i, arrow_schema, out.row_group_rows, out.compression_level, counts
            )
        )
        after_shard()
    if not shards:  # an empty corpus still loads: one shard with the schema and no rows
        empty = pl.DataFrame(schema=schema)
        shards.append(
            _write_shard(
                iter([empty]), run, 0, arrow_schema, out.row_group_rows, out.compression_level
            )
        )
    return shards, counts, arrow_schema
