"""Assembly's inputs: any source of rows (frames, Parquet/JSONL paths, row dicts) as a lazy
frame, normalised to the document schema (``DOCUMENT_TYPES``) and the rejection columns."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from builder.errors import InputError
from builder.records import DOCUMENT_COLUMNS, REJECTION_COLUMNS, canonical_json

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


Source = (
    pl.DataFrame
    | pl.LazyFrame
    | str
    | os.PathLike[str]
    | Sequence[str | os.PathLike[str]]
    | Sequence[Mapping[str, Any]]
    | None
)


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
        parquet = sorted(path.glob("*.parquet"))
        if parquet:
            return scan_parquet_files(parquet)
        files = sorted(path.glob("*.jsonl"))
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


def scan_parquet_files(paths: Sequence[Path]) -> pl.LazyFrame:
    """The rows of the Parquet files ``paths`` (at least one) as one lazy scan.

    Files of one schema are one multi-file scan, where a slice skips the files before it:
    over a concatenation of scans each slice (``lazy_batches``) read every file up to its
    end, ~10x the CPU over 25 partitions. Files of different columns are concatenated
    (missing columns null, types relaxed)."""
    schemas = {tuple(pl.read_parquet_schema(p).items()) for p in paths}
    if len(schemas) == 1:
        return pl.scan_parquet(list(paths))
    return pl.concat([pl.scan_parquet(p) for p in paths], how="diagonal_relaxed")


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
