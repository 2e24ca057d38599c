"""Benchmark decontamination by word n-gram overlap (Phi / GPT-3 style), with a fuzzy check.

A document is *contaminated* when it contains any run of ``ngram`` (default 13) consecutive
normalised words that also occurs in a benchmark item. Normalised words are those of
``builder.dedup.normalize`` (NFKC, lowercase, punctuation dropped), so case, punctuation and
spacing changes do not hide an overlap. Benchmark items shorter than ``ngram`` words but at
least ``min_words`` long are matched whole. Every hit records the benchmark file, the item's
index in it, and the matched words.

With ``fuzzy=True`` each hit also gets a ``fuzzy_score`` (rapidfuzz ``partial_ratio`` of the
item against the document region around the hit, 0-100), and documents that share a shorter
``fuzzy_ngram`` run with an item are flagged too when that region scores at least
``fuzzy_threshold``: this catches passages with small edits every few words, where no
13-word run survives intact.

Benchmark n-grams are hashed to 64 bits and held in one sorted numpy array; documents'
n-gram hashes are looked up with ``np.searchsorted``, in worker processes over partitions:
this module's own pool, or an executor's tasks (``mapper``: Ray tasks, the local executor's
processes), whose workers build the index once from the benchmark files and keep it. The
index and the scan are in ``builder.decontam_index``; this module runs them over tables and
files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from builder.decontam_index import (
    DEFAULT_FIELDS,
    HIT_COLUMNS,
    BenchmarkIndex,
    IndexSpec,
    _empty_hits,
    attach_ids,
    benchmark_files,
    build_index,
    hits_with_ids,
    index_spec,
    load_benchmark_items,
    load_index,
    remember_index,
    scan_texts,
)
from builder.dedup.engine import TaskMap, _task_size
from builder.dedup.plan import check_ids, generated_ids
from builder.dedup.pool import init_worker
from builder.dedup.rowids import IdCheck, check_source_ids, column_batches, node_rates_of, take
from builder.errors import InputError
from builder.io_tables import (
    ParquetSink,
    Partition,
    TableSource,
    arrow_mask,
    check_text_dtype,
    open_table,
    read_partition_batches,
    read_table,
    require_text_column,
    write_parquet_atomic,
)
from builder.parallel import process_map
from builder.settings.dedup import DecontamSettings
from builder.util.files import atomic_copy

_SUB_ROWS = 5000

__all__ = [
    "DEFAULT_FIELDS",
    "HIT_COLUMNS",
    "BenchmarkIndex",
    "DecontamResult",
    "DecontamStats",
    "benchmark_files",
    "build_index",
    "decontaminate",
    "decontaminate_files",
    "load_benchmark_items",
    "scan_texts",
]


def _init_decontam_worker(index: BenchmarkIndex) -> None:
    global _INDEX
    init_worker()
    _INDEX = index


@dataclass
class _Task:
    offset: int
    length: int
    settings: DecontamSettings
    text_column: str
    want_text_hash: bool
    partition: Partition | None = None
    texts: pl.Series | None = None
    #: How the worker gets the index when it is not handed over (an executor's tasks).
    index: IndexSpec | None = None


def _chunks(task: _Task) -> Iterator[list[str | None]]:
    if task.texts is not None:
        values = task.texts.to_list()
        for lo in range(0, len(values), _SUB_ROWS):
            yield values[lo : lo + _SUB_ROWS]
        return
    assert task.partition is not None
    buf: list[str | None] = []
    for batch in read_partition_batches(task.partition, [task.text_column]):
        buf.extend(batch.column(0).to_pylist())
        if len(buf) >= _SUB_ROWS:
            yield buf
            buf = []
    if buf:
        yield buf


def _run(
    task: _Task, index: BenchmarkIndex | None = None
) -> tuple[int, pl.DataFrame, np.ndarray | None]:
    if index is None:
        index = load_index(task.index) if task.index is not None else _INDEX
    assert index is not None
    row = task.offset
    frames = []
    hashes = []
    for texts in _chunks(task):
        hits = scan_texts(texts, index, task.settings)
        if hits.height:
            frames.append(hits.with_columns(pl.col("row") + row))
        if task.want_text_hash:
            hashes.append(
                np.fromiter(
                    (xxhash.xxh3_64_intdigest((t or "").encode("utf-8")) for t in texts),
                    np.uint64,
                    len(texts),
                )
            )
        row += len(texts)
    hits = pl.concat(frames) if frames else _empty_hits(with_row=True)
    th = np.concatenate(hashes) if hashes else None
    return task.offset, hits, th


def _run_all(tasks: list[_Task], index: BenchmarkIndex, workers: int) -> Iterator[tuple]:
    if workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            yield _run(t, index)
        return
    yield from process_map(
        _run, tasks, workers, initializer=_init_decontam_worker, initargs=(index,)
    )


# -- Results and public API --------------------------------------------------------------------


@dataclass
class DecontamStats:
    rows_in: int = 0
    rows_out: int = 0
    contaminated: int = 0
    hits: int = 0
    benchmark_files: int = 0
    benchmark_items: int = 0
    items_too_short: int = 0
    index_ngrams: int = 0
    workers: int = 1
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["seconds"] = round(self.seconds, 3)
        return d


@dataclass
class DecontamResult:
    """``clean``: rows without hits (``None`` from ``decontaminate_files``); ``hits``: one row
    per (document, benchmark item) (``HIT_COLUMNS``); ``contaminated``: the flagged rows with
    ``stage``, ``reason`` and ``detail`` added (what goes to rejected.parquet)."""

    clean: pl.DataFrame | None
    hits: pl.DataFrame
    contaminated: pl.DataFrame
    stats: DecontamStats
    paths: dict[str, Path] = field(default_factory=dict)
    # Contamination rate per taxonomy node (when the input has a taxonomy_path column).
    nodes: pl.DataFrame | None = None

    @property
    def removed(self) -> pl.DataFrame:
        """The contaminated rows as rejection records (same as ``contaminated``)."""
        return self.contaminated


def _stats(
    n: int,
    bad: np.ndarray,
    hits: pl.DataFrame,
    index: BenchmarkIndex,
    nworkers: int,
    t0: float,
    settings: DecontamSettings,
) -> DecontamStats:
    """The counters of one decontamination run (in memory or file to file)."""
    return DecontamStats(
        rows_in=n,
        rows_out=int((~bad).sum()),
        contaminated=int(bad.sum()),
        hits=hits.height,
        benchmark_files=len(index.files),
        benchmark_items=index.n_items,
        items_too_short=index.skipped_short,
        index_ngrams=len(index.keys),
        workers=nworkers,
        seconds=time.perf_counter() - t0,
        settings=_settings_dict(settings),
    )


def _nodes(paths: pl.Series | None, bad: np.ndarray) -> pl.DataFrame | None:
    if paths is None:
        return None
    from builder.diversity import node_rates

    return node_rates(pl.DataFrame({"taxonomy_path": paths, "contaminated": bad}), ["contaminated"])


def _file_nodes(source: TableSource, bad: np.ndarray) -> pl.DataFrame | None:
    """``_nodes`` of a file source's paths, read a batch at a time (``rowids.node_rates_of``;
    None without a ``taxonomy_path`` column)."""
    if "taxonomy_path" not in source.columns:
        return None
    return node_rates_of(source, lambda lo, hi: {"contaminated": bad[lo:hi]}, ["contaminated"])


def _settings_dict(s: DecontamSettings) -> dict[str, Any]:
    keys = ("ngram", "min_words", "fuzzy", "fuzzy_ngram", "fuzzy_threshold")
    return {k: getattr(s, k) for k in keys}


def _reasons(hits: pl.DataFrame) -> pl.DataFrame:
    first = hits.group_by("id", maintain_order=True).agg(
        pl.len().alias("_n"),
        pl.col("benchmark").first(),
        pl.col("item").first(),
        pl.col("ngram").first(),
    )
    return first.select(
        "id",
        pl.lit("decontam").alias("stage"),
        pl.lit("benchmark contamination").alias("reason"),
        pl.format(
            '{} item {}: "{}" ({} benchmark item(s) matched)',
            "benchmark",
            "item",
            "ngram",
            "_n",
        ).alias("detail"),
    )


def decontaminate(
    data: pl.DataFrame | str | os.PathLike[str],
    benchmarks: Sequence[str | os.PathLike[str]] | BenchmarkIndex,
    settings: DecontamSettings | None = None,
    *,
    text_column: str = "text",
    id_column: str = "id",
    field: str | None = None,
    workers: int | None = None,
) -> DecontamResult:
    """Split a table held in memory into clean rows and rows overlapping benchmark items."""
    settings = settings or DecontamSettings()
    t0 = time.perf_counter()
    source_file = None
    if not isinstance(data, pl.DataFrame):
        source_file = data
        data = read_table(data)
    require_text_column(data.columns, text_column, file=source_file, option="--text-column")
    check_text_dtype(data.schema[text_column], text_column, file=source_file)
    if data.height == 0:
        raise InputError("input has no rows", file=source_file, hint="give at least one row")
    index = (
        benchmarks
        if isinstance(benchmarks, BenchmarkIndex)
        else build_index(benchmarks, settings, field=field)
    )
    has_ids = id_column in data.columns
    if has_ids:
        check_ids(data[id_column], column=id_column, file=source_file)
    n = data.height
    size = _task_size(n, settings.partition_size, workers or settings.workers)
    tasks = [
        _Task(
            lo,
            min(size, n - lo),
            settings,
            text_column,
            not has_ids,
            texts=data[text_column].slice(lo, size),
        )
        for lo in range(0, n, size)
    ]
    nworkers = max(1, min(workers or settings.workers or os.cpu_count() or 1, len(tasks)))
    hits_parts, hashes = [], np.zeros(n if not has_ids else 0, dtype=np.uint64)
    for offset, hits, th in _run_all(tasks, index, nworkers):
        hits_parts.append(hits)
        if th is not None:
            hashes[offset : offset + len(th)] = th
    if has_ids:
        ids = data[id_column]
        frame = data
    else:
        ids = generated_ids(hashes).rename(id_column)
        frame = data.with_columns(ids).select([id_column, *data.columns])
    raw = pl.concat(hits_parts) if hits_parts else _empty_hits(with_row=True)
    bad = np.zeros(n, dtype=bool)
    bad[raw["row"].to_numpy()] = True
    hits = attach_ids(raw, ids)
    reasons = _reasons(hits).rename({"id": id_column}) if hits.height else None
    contaminated = frame.filter(pl.Series(bad))
    if reasons is not None:
        contaminated = contaminated.join(
            reasons.with_columns(pl.col(id_column).cast(frame.schema[id_column])),
            on=id_column,
            how="left",
            maintain_order="left",
        )
    stats = _stats(n, bad, hits, index, nworkers, t0, settings)
    nodes = _nodes(frame["taxonomy_path"] if "taxonomy_path" in frame.columns else None, bad)
    return DecontamResult(frame.filter(pl.Series(~bad)), hits, contaminated, stats, nodes=nodes)


def decontaminate_files(
    input_path: str | os.PathLike[str],
    benchmarks: Sequence[str | os.PathLike[str]] | BenchmarkIndex,
    outdir: str | os.PathLike[str],
    settings: DecontamSettings | None = None,
    *,
    text_column: str = "text",
    id_column: str = "id",
    field: str | None = None,
    workers: int | None = None,
    mapper: TaskMap | None = None,
    hits: pl.DataFrame | None = None,
) -> DecontamResult:
    """Decontaminate Parquet/JSONL input of any size into ``outdir``.

    Writes ``clean.parquet`` (rows without hits, every column), ``hits.parquet``
    (``HIT_COLUMNS``) and ``rejected.parquet`` (contaminated rows with stage/reason/detail),
    each atomically.

    ``mapper`` (an executor's ``map_tasks``: Ray tasks, or the local executor's processes)
    runs the scan of each slice of the input elsewhere; each task then names the benchmark
    files instead of carrying the index, and a worker builds the index once and keeps it
    for its later tasks (``benchmarks`` must be files, and the input and ``outdir`` on a
    filesystem the workers see). None: this process, or a pool of ``workers``.

    ``hits``: the hits of a scan already made with the same index (``HIT_COLUMNS``; e.g. by
    dedup's signature tasks, ``dedup_files(..., scan=...)``) over rows that include every
    row of the input, by id: the input is then not scanned again, and its rows are
    decontaminated with the hits of their ids. The input must have ``id_column``.
    """
    settings = settings or DecontamSettings()
    t0 = time.perf_counter()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".decontam-work-", dir=out))
    try:
        source = open_table(
            input_path,
            text_column=text_column,
            workdir=work,
            partition_size=settings.partition_size,
        )
        index = (
            benchmarks
            if isinstance(benchmarks, BenchmarkIndex)
            else build_index(benchmarks, settings, field=field)
        )
        n = source.num_rows
        has_ids = id_column in source.columns
        if hits is not None:
            if not has_ids:
                raise ValueError("decontaminate_files: hits by id need an input with ids")
            bad, present, id_dtype = _flag_ids(source, id_column, hits["id"], work)
            return _finish_files(
                source, out, settings, index, t0, hits.filter(pl.col("id").is_in(present)),
                bad, None, id_dtype, id_column, 0,
            )  # fmt: skip
        hint = workers or settings.workers or os.cpu_count() or 1
        spec = None
        if mapper is None:
            parts = source.partitions(_task_size(n, settings.partition_size, hint), hint)
        else:
            if isinstance(benchmarks, BenchmarkIndex):
                raise TypeError("decontaminate_files: a mapper needs benchmark files, not an index")
            spec = index_spec(index.files, settings, field)
            remember_index(spec, index)  # tasks run here (in-process) reuse it
            # The mapper spreads them: slices of at most partition_size rows, any row group
            # bigger than that cut into as many.
            size = settings.partition_size
            parts = source.partitions(size, -(-n // size))
        tasks = [
            _Task(p.offset, p.length, settings, text_column, not has_ids, partition=p, index=spec)
            for p in parts
        ]
        nworkers = max(1, min(hint, len(tasks)))
        parts, hashes = [], np.zeros(n if not has_ids else 0, dtype=np.uint64)
        results = mapper(_run, tasks) if mapper is not None else _run_all(tasks, index, nworkers)
        for offset, hits, th in results:
            parts.append(hits)
            if th is not None:
                hashes[offset : offset + len(th)] = th
        raw = pl.concat(parts) if parts else _empty_hits(with_row=True)
        rows = raw["row"].to_numpy()
        bad = np.zeros(n, dtype=bool)
        bad[rows] = True
        generated = None
        if has_ids:  # checked, and read at the hits' rows only: a batch at a time
            id_dtype = check_source_ids(source, id_column, source.label, work)
            hits = hits_with_ids(raw, take(source, [id_column], rows)[id_column])
        else:
            generated = generated_ids(hashes).rename(id_column)
            id_dtype = generated.dtype
            hits = attach_ids(raw, generated)
        return _finish_files(
            source, out, settings, index, t0, hits, bad, generated, id_dtype, id_column, nworkers
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _flag_ids(
    source: TableSource, id_column: str, wanted: pl.Series, work: Path
) -> tuple[np.ndarray, pl.Series, pl.DataType]:
    """One pass over ``source``'s ids, a batch at a time: checked (present, unique), which
    rows have an id in ``wanted`` (the few hit ids), those of ``wanted`` found, and the ids'
    type."""
    check = IdCheck(id_column, source.label, spill_dir=work)
    want = wanted.unique().implode()
    flags: list[np.ndarray] = [np.zeros(0, dtype=bool)]
    present: list[pl.Series] = []
    dtype: pl.DataType = wanted.dtype
    for ids in column_batches(source, id_column):
        check.add(ids)
        dtype = ids.dtype
        mask = ids.is_in(want).fill_null(False)
        flags.append(mask.to_numpy())
        present.append(ids.filter(mask))
    check.finish(lambda: column_batches(source, id_column))
    found = pl.concat(present) if present else wanted.clear()
    return np.concatenate(flags), found.implode(), dtype


def _finish_files(
    source: TableSource,
    out: Path,
    settings: DecontamSettings,
    index: BenchmarkIndex,
    t0: float,
    hits: pl.DataFrame,
    bad: np.ndarray,
    generated: pl.Series | None,
    id_dtype: pl.DataType,
    id_column: str,
    nworkers: int,
) -> DecontamResult:
    """Write ``decontaminate_files``' outputs from the hits by id and the rows they flag
    (``generated``: the ids made for an input without any, in its row order)."""
    reasons = _reasons(hits) if hits.height else _reasons(_empty_hits(id_dtype=id_dtype))
    paths = {"hits": write_parquet_atomic(hits, out / "hits.parquet")}
    paths["clean"], paths["rejected"] = _split_write(
        source, out, bad, generated, id_column, reasons
    )
    contaminated = pl.read_parquet(paths["rejected"])
    stats = _stats(source.num_rows, bad, hits, index, nworkers, t0, settings)
    return DecontamResult(None, hits, contaminated, stats, paths, nodes=_file_nodes(source, bad))


def _single_parquet(source: TableSource) -> bool:
    """Whether ``source`` is one Parquet file whose schema is the table's (so a copy of its
    bytes holds the table's rows and schema)."""
    if len(source.files) != 1:
        return False
    try:
        return pq.read_schema(source.files[0]).equals(source.schema, check_metadata=True)
    except (OSError, pa.ArrowInvalid):
        return False


def _split_write(
    source: TableSource,
    out: Path,
    bad: np.ndarray,
    generated: pl.Series | None,
    id_column: str,
    reasons: pl.DataFrame,
) -> tuple[Path, Path]:
    schema = source.schema
    if generated is not None:
        schema = schema.insert(0, pa.field(id_column, pa.string()))
    rej_schema = schema
    for name in ("stage", "reason", "detail"):
        if rej_schema.get_field_index(name) < 0:
            rej_schema = rej_schema.append(pa.field(name, pa.string()))
    detail = {
        r: (st, re, de)
        for r, st, re, de in zip(
            reasons["id"].to_list(),
            reasons["stage"].to_list(),
            reasons["reason"].to_list(),
            reasons["detail"].to_list(),
            strict=True,
        )
    }
    if generated is None and not bad.any() and _single_parquet(source):
        # Nothing is contaminated: the clean file is the input as it is (a byte copy, not
        # a decode and encode of every text) and rejected.parquet has no rows.
        atomic_copy(source.files[0], out / "clean.parquet")
        with ParquetSink(out / "rejected.parquet", rej_schema):
            pass
        return out / "clean.parquet", out / "rejected.parquet"
    id_arrow = generated.to_arrow().cast(pa.string()) if generated is not None else None
    offset = 0
    with (
        ParquetSink(out / "clean.parquet", schema) as clean,
        ParquetSink(out / "rejected.parquet", rej_schema) as rejected,
    ):
        for batch in source.iter_batches():
            lo, hi = offset, offset + batch.num_rows
            offset = hi
            table = pa.Table.from_batches([batch])
            if id_arrow is not None:
                table = table.add_column(0, id_column, id_arrow.slice(lo, hi - lo))
            mask = bad[lo:hi]
            clean.write(table.filter(arrow_mask(~mask)))
            if mask.any():
                rej = table.filter(arrow_mask(mask))
                keys = rej.column(id_column).to_pylist()
                for k, name in enumerate(("stage", "reason", "detail")):
                    values = [detail.get(key, (None, None, None))[k] for key in keys]
                    idx = rej.schema.get_field_index(name)
                    arr = pa.array(values, type=pa.string())
                    rej = (
                        rej.set_column(idx, name, arr) if idx >= 0 else rej.append_column(name, arr)
                    )
                rejected.write(rej)
    return out / "clean.parquet", out / "rejected.parquet"
