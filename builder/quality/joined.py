"""The temporary files of ``EmbeddedCorpus`` (``builder.quality.buckets``): rows appended to
per-bucket Arrow IPC files, and each bucket's rows joined with their vectors.

Two ways to the joined files (``joined/<k>.arrow``). When the documents' ids are, in order,
a subsequence of the embedding partitions' (what the stages leave: the quality stage embeds
the rows it reads, in order, and each later stage keeps some rows of its input in order),
``merge_in_order`` reads both side by side and writes consecutive chunks of the documents
with their vectors: no hashing, no per-bucket files, no join. Otherwise (an input of
another run, a missing embedding) both sides are split by a hash of the id into buckets
(``_split``) and each bucket is joined on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

#: The column ``text_lengths`` adds: the text's length in characters.
LENGTH = "_len"


def bucket_path(out: Path, bucket: int) -> Path:
    """The temporary file of ``bucket`` under ``out`` (``_BucketFiles``)."""
    return out / f"{bucket}.arrow"


def read_bucket(path: Path) -> pa.Table:
    """A temporary file written by ``_BucketFiles`` (or ``_write_joined``), read whole."""
    with pa.OSFile(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


class _BucketFiles:
    """Rows appended to ``out/<bucket>.arrow`` (``bucket_path``), one Arrow IPC writer per
    bucket seen (uncompressed: module docstring)."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
        self._schemas: dict[int, pa.Schema] = {}  # each file's: its first part's
        self._sinks: list[pa.NativeFile] = []

    def path(self, bucket: int) -> Path:
        return bucket_path(self.out, bucket)

    def append(self, table: pa.Table, buckets: np.ndarray) -> None:
        """Append each row of ``table`` to the file of its entry in ``buckets`` (in their
        order within each bucket: one stable sort and one take, not one scan per bucket)."""
        if table.num_rows == 0:
            return
        order = np.argsort(buckets, kind="stable")
        ordered = buckets[order]
        table = table.take(pa.array(order))
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        ends = np.r_[starts[1:], len(ordered)]
        for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
            b = int(ordered[lo])
            part = table.slice(lo, hi - lo)
            writer = self.writers.get(b)
            if writer is None:
                sink = pa.OSFile(str(self.path(b)), "wb")
                self._sinks.append(sink)
                writer = self.writers[b] = pa.ipc.new_file(sink, part.schema)
                self._schemas[b] = part.schema
            writer.write_table(part.cast(self._schemas[b]))

    def __enter__(self) -> _BucketFiles:
        return self

    def __exit__(self, *exc: Any) -> None:
        for writer in self.writers.values():
            writer.close()
        for sink in self._sinks:
            sink.close()


#: The vectors' column in a joined bucket file (``_write_joined``).
_VECTORS = "_vectors"


def _write_joined(path: Path, docs: pl.DataFrame, vectors: np.ndarray | None) -> None:
    """A bucket's rows with their vectors (a fixed-size list column, when any), for the
    passes after the first (``_read_joined``)."""
    table = docs.to_arrow()
    if vectors is not None:
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel(), pa.float32())
        column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
        table = table.append_column(_VECTORS, column)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _read_joined(path: Path, with_vectors: bool) -> tuple[pl.DataFrame, np.ndarray | None]:
    """A bucket's rows and vectors as ``_write_joined`` wrote them, memory-mapped (no copy:
    the file is read again each pass; the mapping lives as long as the rows do)."""
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    if not with_vectors:
        return _frame(table), None
    vectors = _fixed_vectors(table.select([_VECTORS]))
    return _frame(table.drop_columns([_VECTORS])), vectors


def _frame(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _split(
    tables: Iterator[pa.Table],
    out: Path,
    buckets: int,
    *,
    rows: bool = False,
    vectors: str | None = None,
) -> None:
    """Append each table's rows to ``out/<hash(id) % buckets>.arrow`` (with the running
    row number as ``_row`` when ``rows``; the list column ``vectors`` as fixed-size lists,
    ``_fixed_lists``)."""
    offset = 0
    with _BucketFiles(out) as files:
        for table in tables:
            frame = _frame(table)
            if rows:
                frame = frame.with_row_index("_row", offset=offset)
            offset += frame.height
            keys = (frame["id"].cast(pl.String).hash(seed=7) % buckets).to_numpy()
            arrow = frame.to_arrow()
            if vectors is not None and vectors in arrow.column_names:
                arrow = _fixed_lists(arrow, vectors)
            files.append(arrow, keys)


def _fixed_lists(table: pa.Table, name: str) -> pa.Table:
    """``table`` with its list column ``name`` cast to fixed-size lists when every list has
    the same length (the same values and nulls): Arrow takes those rows ~50x faster (a
    copy of each row's block, not of each value by index), ~1 CPU s of the split at 200k.
    Lists of unequal lengths stay as they are."""
    column = table.column(name)
    if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
        return table
    lengths = pc.min_max(pc.list_value_length(column)).as_py()
    if lengths["min"] is None or lengths["min"] != lengths["max"] or lengths["min"] == 0:
        return table
    fixed = column.cast(pa.list_(column.type.value_type, lengths["min"]))
    return table.set_column(table.column_names.index(name), name, fixed)


def _fixed_vectors(table: pa.Table) -> np.ndarray:
    """The ``(n, d)`` float32 array of a table's one fixed-size-list column (no copy per
    row: one flat buffer)."""
    column = table.column(0).combine_chunks()
    flat = column.values.to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), column.type.list_size)


def merge_in_order(
    docs: Iterator[pa.Table],
    embeddings: Iterator[pa.Table],
    out: Path,
    rows: int,
    *,
    lengths: bool,
    held: Callable[[int], None],
) -> int | None:
    """Write the joined files ``out/<k>.arrow`` of the documents in chunks of ``rows``
    (the last one shorter), each row with its vector and (``lengths``) its embedding's
    ``length`` as ``LENGTH``, when the documents' ids are, in order, a subsequence of the
    embeddings' and the vectors all have one width; returns how many files it wrote.
    None when they are not, with nothing left in ``out``: the caller splits by hash.

    Each embedding batch is matched against as many of the next documents as it has rows:
    its matches must be exactly the first of them, in order, so a document is never paired
    with another's vector; a document left over at the end has no embedding."""
    import shutil

    written = None
    try:
        written = _merge(docs, embeddings, out, rows, lengths, held)
    finally:
        if written is None:  # not in order, or an error: no half-written chunks are left
            shutil.rmtree(out, ignore_errors=True)
    return written


def _merge(docs, embeddings, out, rows, lengths, held) -> int | None:
    """``merge_in_order``'s work (its arguments, as it passes them)."""
    pending: pa.Table | None = None  # documents read and not matched yet
    docs_left = True
    offset = 0  # the corpus row of the first pending document
    chunk: list[tuple[pl.DataFrame, np.ndarray]] = []  # matched, not written yet
    in_chunk = written = 0
    width: int | None = None

    def flush(limit: int) -> None:
        nonlocal chunk, in_chunk, written
        while in_chunk and in_chunk >= limit:
            frame = pl.concat([f for f, _ in chunk], how="vertical_relaxed")
            vectors = np.concatenate([v for _, v in chunk])
            take = min(rows, in_chunk)
            _write_joined(bucket_path(out, written), frame.slice(0, take), vectors[:take])
            written += 1
            chunk = [(frame.slice(take), vectors[take:])] if in_chunk > take else []
            in_chunk -= take

    for emb in embeddings:
        while docs_left and (pending is None or pending.num_rows < emb.num_rows):
            table = next(docs, None)
            if table is None:
                docs_left = False
            elif pending is None:
                pending = table
            else:
                pending = pa.concat_tables([pending, table], promote_options="permissive")
        if pending is None or pending.num_rows == 0:
            if not docs_left:
                break  # every document has its vector: the rest are the rejected rows'
            continue
        held(pending.num_rows + in_chunk)
        window = pending.column("id").slice(0, emb.num_rows).cast(pa.string())
        ids = emb.column("id").cast(pa.string())
        mask = pc.is_in(ids, value_set=window)
        k = pc.sum(mask).as_py() or 0
        if k == 0:
            continue
        if not pc.all(pc.equal(ids.filter(mask), window[:k])).as_py():
            return None  # not in the documents' order
        # the batch's vectors as one array, then the matched rows (Arrow's filter of a
        # list column copies list by list: ~40% of the merge)
        column = emb.column("embedding").combine_chunks()
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
            return None  # (fixed-size lists: an older writer's; the split reads them)
        sizes = pc.min_max(pc.list_value_length(column)).as_py()
        if column.null_count or not sizes["min"] or sizes["min"] != sizes["max"]:
            return None
        if width not in (None, sizes["min"]):
            return None
        width = int(sizes["min"])
        # the values from the first list's offset (``list_flatten`` then ``to_numpy``
        # copied them, ~4x the time of the rest of the merge)
        start = column.offsets[0].as_py()
        values = column.values.slice(start, emb.num_rows * width)
        flat = values.to_numpy(zero_copy_only=values.null_count == 0)
        picked = mask.to_numpy(zero_copy_only=False)
        vectors = flat.reshape(emb.num_rows, width)[picked].astype(np.float32, copy=False)
        frame = _frame(pending.slice(0, k)).with_row_index("_row", offset=offset)
        if lengths:
            found = emb.column("length").filter(mask)
            frame = frame.with_columns(pl.Series(LENGTH, found).fill_null(0).cast(pl.Int64))
        chunk.append((frame, vectors))
        in_chunk += k
        offset += k
        pending = pending.slice(k)
        flush(rows)
    if pending is not None and pending.num_rows:
        return None  # documents without an embedding
    if docs_left and any(table.num_rows for table in docs):
        return None
    flush(1)
    return written
