"""Reading table inputs (Parquet, JSONL) with clear errors, in bounded memory.

Stages that work on "any Parquet or JSONL file with a text column" (dedup, decontam, report)
read their input through this module so that every user mistake gets the same kind of
message: which file, which line or column, and what to do. Inputs may be one file, a
directory of files, or a glob pattern; JSONL is converted once to Parquet in a work
directory so that the rest of a stage can read it in row-group partitions, in parallel,
without holding it in memory.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from builder.errors import InputError
from builder.util.files import atomic_write, fsync_dir

PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
TEXT_SUFFIXES = (".txt", ".md", ".text")


#: Compressed files are read transparently (by suffix, else by their magic bytes).
COMPRESSION_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"))


def compression_of(path: str | os.PathLike[str]) -> str | None:
    """``gzip`` | ``zstd`` for a compressed file, else None."""
    p = Path(path)
    codec = COMPRESSION_SUFFIXES.get(p.suffix.lower())
    if codec is not None:
        return codec
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return None
    return next((c for magic, c in _MAGIC if head.startswith(magic)), None)


def decompressed(path: str | os.PathLike[str], workdir: str | os.PathLike[str]) -> Path:
    """``path`` itself, or, when it is gzip/zstd-compressed, its contents decompressed into
    ``workdir`` (streamed, any size) under its name without the compression suffix."""
    p = Path(path)
    codec = compression_of(p)
    if codec is None:
        return p
    name = p.stem if p.suffix.lower() in COMPRESSION_SUFFIXES else p.name + ".out"
    dest = Path(workdir) / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with pa.CompressedInputStream(pa.OSFile(str(p)), codec) as src, open(dest, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(
            f"cannot decompress ({codec}): {exc}".splitlines()[0],
            file=p,
            hint="check that the file is complete (re-download it), or decompress it yourself",
        ) from None
    return dest


def _is_table_file(path: Path, suffixes: tuple[str, ...]) -> bool:
    """A file whose suffix (ignoring a compression suffix) is one of ``suffixes``."""
    names = [s.lower() for s in path.suffixes[-2:]]
    if names and names[-1] in COMPRESSION_SUFFIXES:
        names = names[:-1]
    return bool(names) and names[-1] in suffixes


def table_format(path: str | os.PathLike[str]) -> str:
    """``parquet`` | ``jsonl`` | ``text`` by suffix, else by sniffing the first bytes.

    A compressed file must be decompressed first (``decompressed``): its bytes say nothing.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in TEXT_SUFFIXES:
        return "text"
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}", file=p) from None
    if head == b"PAR1":
        return "parquet"
    if head.lstrip()[:1] == b"{":
        return "jsonl"
    return "text"


def resolve_inputs(path: str | os.PathLike[str], *, what: str = "input") -> list[Path]:
    """The files behind ``path``: the file itself, a directory's table files, or a glob."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(
            f
            for f in p.iterdir()
            if f.is_file() and _is_table_file(f, PARQUET_SUFFIXES + JSONL_SUFFIXES)
        )
        if not files:
            raise InputError(
                f"{what} directory has no .parquet or .jsonl files",
                file=p,
                hint="point at a file, or a directory holding *.parquet / *.jsonl",
            )
        return files
    matches = sorted(Path(m) for m in glob.glob(str(path)) if Path(m).is_file())
    if matches:
        return matches
    raise InputError(
        f"{what} not found",
        file=p,
        hint="check the path; inputs may be a file, a directory or a glob such as 'data/*.parquet'",
    )


def find_jsonl_problem(path: str | os.PathLike[str]) -> InputError | None:
    """Scan a JSONL file line by line and describe its first bad line, if any.

    Used after a fast reader failed, to tell the user *where* the file is broken.
    """
    p = Path(path)
    with open(p, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return InputError(
                    f"line {number} is not valid UTF-8 (byte {exc.start} of the line)",
                    file=p,
                    line=number,
                    hint="re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`",
                )
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                return InputError(
                    f"line {number} is not valid JSON: {exc.msg} (column {exc.colno})",
                    file=p,
                    line=number,
                    hint="each line must be one JSON object",
                )
            if not isinstance(value, dict):
                return InputError(
                    f"line {number} is a JSON {type(value).__name__}, not an object",
                    file=p,
                    line=number,
                    hint='each line must be one JSON object such as {"text": "..."}',
                )
    return None


def _jsonl_error(path: Path, exc: Exception) -> InputError:
    found = find_jsonl_problem(path)
    if found is not None:
        return found
    return InputError(f"cannot read JSONL: {exc}", file=path, hint="check that it is JSON lines")


def _check_nonempty(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}", file=path) from None
    if size == 0:
        raise InputError("file is empty", file=path, hint="give a file with at least one row")


def read_jsonl(
    path: str | os.PathLike[str], *, columns: Sequence[str] | None = None
) -> pl.DataFrame:
    """Read a whole JSONL file (small inputs); errors name the first bad line."""
    p = Path(path)
    _check_nonempty(p)
    try:
        df = pl.read_ndjson(p, infer_schema_length=None)
    except Exception as exc:  # polars raises ComputeError/SchemaError without line numbers
        raise _jsonl_error(p, exc) from None
    if df.height == 0:
        raise InputError("file has no rows", file=p, hint="give a file with at least one row")
    if columns is not None:
        df = df.select([c for c in columns if c in df.columns])
    return df


def _parquet_file(path: Path) -> pq.ParquetFile:
    _check_nonempty(path)
    try:
        return pq.ParquetFile(path)
    except Exception as exc:
        raise InputError(
            f"cannot read Parquet: {exc}",
            file=path,
            hint="check that the file is complete (not truncated) and really Parquet",
        ) from None


def read_parquet(
    path: str | os.PathLike[str], *, columns: Sequence[str] | None = None
) -> pl.DataFrame:
    """Read a whole Parquet file (small inputs) with a clear error when it is unreadable."""
    p = Path(path)
    pf = _parquet_file(p)
    if pf.metadata.num_rows == 0:
        raise InputError("file has no rows", file=p, hint="give a file with at least one row")
    try:
        cols = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
        return pl.from_arrow(pf.read(columns=cols))  # type: ignore[return-value]
    except Exception as exc:
        raise InputError(
            f"cannot read Parquet: {exc}",
            file=p,
            hint="check that the file is complete (not truncated) and really Parquet",
        ) from None


def read_table(
    path: str | os.PathLike[str], *, columns: Sequence[str] | None = None
) -> pl.DataFrame:
    """Read every file behind ``path`` (file, directory or glob) into one DataFrame."""
    frames = []
    for f in resolve_inputs(path):
        fmt = table_format(f)
        if fmt == "parquet":
            frames.append(read_parquet(f, columns=columns))
        elif fmt == "jsonl":
            frames.append(read_jsonl(f, columns=columns))
        else:
            raise InputError(
                "not a Parquet or JSONL file",
                file=f,
                hint="inputs must be .parquet or .jsonl (one JSON object per line)",
            )
    if len(frames) == 1:
        return frames[0]
    return pl.concat(frames, how="diagonal_relaxed")


def require_text_column(
    columns: Sequence[str], name: str, *, file: str | os.PathLike[str] | None, option: str
) -> None:
    """Raise an ``InputError`` listing the available columns when ``name`` is missing."""
    if name in columns:
        return
    shown = ", ".join(columns) if columns else "(none)"
    raise InputError(
        f"no column '{name}' (columns: {shown})",
        file=file,
        hint=f"pass {option} with one of the columns above",
    )


def check_text_dtype(dtype: pa.DataType | pl.DataType, name: str, *, file=None) -> None:
    """Text columns must hold strings (nulls are allowed and read as empty text)."""
    if isinstance(dtype, pa.DataType):
        ok = (
            pa.types.is_string(dtype)
            or pa.types.is_large_string(dtype)
            or pa.types.is_string_view(dtype)
            or pa.types.is_null(dtype)
        )
    else:
        ok = dtype in (pl.String, pl.Null)
    if not ok:
        raise InputError(
            f"column '{name}' holds {dtype}, not text",
            file=file,
            hint="choose a string column with --text-column",
        )


# -- Bounded-memory access to large inputs ------------------------------------------------


@dataclass(frozen=True)
class Partition:
    """A run of rows of one Parquet file: what one worker task reads and processes.

    Rows ``skip .. skip + length`` of row groups ``row_groups`` of ``file``; ``offset`` is the
    global index of its first row across all input files.
    """

    file: str
    row_groups: tuple[int, ...]
    skip: int
    length: int
    offset: int


def read_partition_batches(
    part: Partition, columns: Sequence[str], *, batch_rows: int = 1024
) -> Iterator[pa.RecordBatch]:
    """Yield the partition's rows as Arrow batches of at most ``batch_rows`` rows."""
    pf = pq.ParquetFile(part.file)
    to_skip = part.skip
    remaining = part.length
    for batch in pf.iter_batches(
        batch_size=batch_rows, row_groups=list(part.row_groups), columns=list(columns)
    ):
        if remaining <= 0:
            break
        if to_skip >= batch.num_rows:
            to_skip -= batch.num_rows
            continue
        if to_skip:
            batch = batch.slice(to_skip)
            to_skip = 0
        if batch.num_rows > remaining:
            batch = batch.slice(0, remaining)
        remaining -= batch.num_rows
        yield batch


@dataclass
class RowFiles:
    """Rows stored in ``files`` (read from the user's ``original`` files), with their unified
    ``schema`` and the rows of each file: what every table source shares."""

    files: list[Path]
    original: list[Path]
    schema: pa.Schema
    row_counts: list[int]

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    @property
    def num_rows(self) -> int:
        return sum(self.row_counts)

    @property
    def label(self) -> str:
        return str(self.original[0]) if len(self.original) == 1 else f"{len(self.original)} files"


@dataclass
class TableSource(RowFiles):
    """One logical table made of one or more Parquet files (JSONL inputs already converted).

    Rows are numbered globally in file order; every stage addresses rows by that index.
    """

    _workdir: Path | None = field(default=None, repr=False)

    def partitions(self, partition_size: int, workers: int = 1) -> list[Partition]:
        """Split the rows into tasks of about ``partition_size`` rows, along row groups.

        A row group larger than a partition is split into at most ``workers`` pieces (each
        piece decodes the whole row group, so more pieces would only repeat that work).
        """
        parts: list[Partition] = []
        offset = 0
        for f in self.files:
            meta = pq.ParquetFile(f).metadata
            group: list[int] = []
            group_rows = 0
            group_offset = offset
            for rg in range(meta.num_row_groups):
                n = meta.row_group(rg).num_rows
                if n == 0:
                    continue
                if n > partition_size:
                    if group:
                        parts.append(Partition(str(f), tuple(group), 0, group_rows, group_offset))
                        group, group_rows = [], 0
                    pieces = max(1, min(workers, -(-n // partition_size)))
                    step = -(-n // pieces)
                    for k in range(pieces):
                        lo = k * step
                        hi = min(n, lo + step)
                        if hi > lo:
                            parts.append(Partition(str(f), (rg,), lo, hi - lo, offset + lo))
                    offset += n
                    group_offset = offset
                    continue
                if not group:
                    group_offset = offset
                group.append(rg)
                group_rows += n
                offset += n
                if group_rows >= partition_size:
                    parts.append(Partition(str(f), tuple(group), 0, group_rows, group_offset))
                    group, group_rows = [], 0
            if group:
                parts.append(Partition(str(f), tuple(group), 0, group_rows, group_offset))
        return parts

    def iter_batches(
        self, columns: Sequence[str] | None = None, *, batch_rows: int = 8192
    ) -> Iterator[pa.RecordBatch]:
        """Every row in global order, as Arrow batches conformed to ``self.schema``."""
        cols = list(columns) if columns is not None else self.columns
        target = pa.schema([self.schema.field(c) for c in cols])
        for f in self.files:
            pf = pq.ParquetFile(f)
            present = [c for c in cols if c in pf.schema_arrow.names]
            for batch in pf.iter_batches(batch_size=batch_rows, columns=present):
                yield conform(batch, target)

    def read_columns(self, columns: Sequence[str]) -> pl.DataFrame:
        """Small columns (ids, flags, paths) for every row, as one DataFrame."""
        cols = [c for c in columns if c in self.columns]
        if not cols:
            return pl.DataFrame()
        tables = []
        target = pa.schema([self.schema.field(c) for c in cols])
        for f in self.files:
            pf = pq.ParquetFile(f)
            present = [c for c in cols if c in pf.schema_arrow.names]
            table = pf.read(columns=present)
            tables.append(
                pa.Table.from_batches([conform(b, target) for b in table.to_batches()], target)
            )
        return pl.from_arrow(pa.concat_tables(tables))  # type: ignore[return-value]

    def cleanup(self) -> None:
        """Remove converted copies of JSONL inputs."""
        if self._workdir is not None:
            for f in self.files:
                if f.parent == self._workdir:
                    f.unlink(missing_ok=True)


def conform(batch: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
    """``batch`` with ``target``'s columns and types (missing columns as nulls)."""
    arrays = []
    for fld in target:
        idx = batch.schema.get_field_index(fld.name)
        if idx < 0:
            arrays.append(pa.nulls(batch.num_rows, type=fld.type))
            continue
        col = batch.column(idx)
        if col.type != fld.type:
            col = col.cast(fld.type)
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, schema=target)


def jsonl_to_parquet(src: Path, dest: Path, *, row_group_size: int) -> None:
    """Convert JSONL to Parquet with bounded memory; errors name the first bad line."""
    _check_nonempty(src)
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        pl.scan_ndjson(src, infer_schema_length=None).sink_parquet(
            tmp, row_group_size=row_group_size
        )
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise _jsonl_error(src, exc) from None
    os.replace(tmp, dest)


def open_table(
    path: str | os.PathLike[str],
    *,
    text_column: str,
    workdir: str | os.PathLike[str] | None = None,
    partition_size: int = 10_000,
    option: str = "--text-column",
) -> TableSource:
    """Open every file behind ``path`` as a ``TableSource`` and check the text column.

    JSONL files are converted to Parquet under ``workdir`` (a temporary directory when not
    given). Raises ``InputError`` for a missing/empty/unreadable file or a missing column.
    """
    originals = resolve_inputs(path)
    files: list[Path] = []
    schemas: list[pa.Schema] = []
    counts: list[int] = []
    work = Path(workdir) if workdir is not None else None
    for original in originals:
        f = original
        if compression_of(f) is not None:
            if work is None:
                work = Path(tempfile.mkdtemp(prefix="corpus-table-"))
            f = decompressed(f, work / f"z{len(files):05d}")
        fmt = table_format(f)
        if fmt == "jsonl":
            if work is None:
                work = Path(tempfile.mkdtemp(prefix="corpus-table-"))
            work.mkdir(parents=True, exist_ok=True)
            dest = work / f"{len(files):05d}-{f.stem}.parquet"
            jsonl_to_parquet(f, dest, row_group_size=partition_size)
            target = dest
        elif fmt == "parquet":
            target = f
        else:
            raise InputError(
                "not a Parquet or JSONL file",
                file=f,
                hint="inputs must be .parquet or .jsonl (one JSON object per line)",
            )
        pf = _parquet_file(target)
        schema = pf.schema_arrow
        display = original
        require_text_column(schema.names, text_column, file=display, option=option)
        check_text_dtype(schema.field(text_column).type, text_column, file=display)
        files.append(target)
        schemas.append(schema)
        counts.append(pf.metadata.num_rows)
    if sum(counts) == 0:
        raise InputError(
            "input has no rows", file=originals[0], hint="give a file with at least one row"
        )
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(
            f"input files have incompatible columns: {exc}",
            file=originals[0],
            hint="give files with the same columns and types",
        ) from None
    return TableSource(files, originals, schema, counts, work)


# -- Writing ---------------------------------------------------------------------------------


def arrow_mask(mask) -> pa.BooleanArray:
    """A numpy bool array as an Arrow boolean array (without ``pa.array``, which imports
    pandas to inspect numpy inputs: 0.7 s the first time)."""
    import numpy as np

    m = np.ascontiguousarray(mask, dtype=bool)
    bits = np.packbits(m, bitorder="little")
    return pa.BooleanArray.from_buffers(pa.bool_(), len(m), [None, pa.py_buffer(bits.tobytes())])


def write_parquet_atomic(df: pl.DataFrame | pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write a table to ``path`` via a temporary file and ``os.replace`` (no half files)."""
    table = df.to_arrow() if isinstance(df, pl.DataFrame) else df
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


class ParquetSink:
    """Stream record batches into a Parquet file that appears atomically on ``close()``.

    Used as a context manager; on an exception the temporary file is removed and nothing is
    left at ``path``.
    """

    def __init__(self, path: str | os.PathLike[str], schema: pa.Schema) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.schema = schema
        self.rows = 0
        self._writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows:
            if isinstance(batch, pa.RecordBatch):
                batch = pa.Table.from_batches([batch])
            self._writer.write_table(batch.cast(self.schema))
            self.rows += batch.num_rows

    def close(self) -> Path:
        self._writer.close()
        with open(self.tmp, "rb") as fh:
            os.fsync(fh.fileno())  # the rename must not outlive the data on a crash
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
