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
n-gram hashes are looked up with ``np.searchsorted``, in worker processes over partitions.
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
import xxhash

from builder.dedup.engine import _generated_ids, _init_worker, _task_size, check_ids
from builder.dedup.normalize import Tokens, ngram_hashes, tokenize, word_hashes
from builder.errors import InputError
from builder.io_tables import (
    JSONL_SUFFIXES,
    PARQUET_SUFFIXES,
    TEXT_SUFFIXES,
    ParquetSink,
    Partition,
    TableSource,
    _is_table_file,
    arrow_mask,
    check_text_dtype,
    compression_of,
    decompressed,
    open_table,
    read_jsonl,
    read_parquet,
    read_partition_batches,
    read_table,
    require_text_column,
    table_format,
    write_parquet_atomic,
)
from builder.parallel import process_map
from builder.settings.dedup import DecontamSettings

DEFAULT_FIELDS = ("text", "question", "prompt", "input", "content", "problem", "passage")
HIT_COLUMNS = (
    "id",
    "benchmark",
    "item",
    "ngram",
    "position",
    "ngram_words",
    "matches",
    "method",
    "fuzzy_score",
)
# An n-gram shared by more benchmark items than this is recorded against the first ones only.
_MAX_ITEMS_PER_NGRAM = 16
_SUB_ROWS = 5000


# -- Benchmarks ---------------------------------------------------------------------------


def benchmark_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand benchmark arguments (files, directories, globs) into files, in order."""
    import glob

    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted(
                f
                for f in p.iterdir()
                if f.is_file()
                and _is_table_file(f, PARQUET_SUFFIXES + JSONL_SUFFIXES + TEXT_SUFFIXES)
            )
            if not found:
                raise InputError(
                    "benchmark directory has no .jsonl, .parquet or .txt files", file=p
                )
            out.extend(found)
        else:
            matches = sorted(Path(m) for m in glob.glob(str(raw)) if Path(m).is_file())
            if not matches:
                raise InputError(
                    "benchmark file not found",
                    file=p,
                    hint="pass --against with an existing JSONL, Parquet or text file",
                )
            out.extend(matches)
    if not out:
        raise InputError(
            "no benchmark files given",
            hint="pass --against FILE (JSONL, Parquet or plain text), or set "
            "[decontam] benchmarks in corpus.toml",
        )
    return out


def _text_items(path: Path) -> list[str]:
    raw = path.read_bytes()
    if not raw.strip():
        raise InputError("benchmark file is empty", file=path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(
            f"line {line} is not valid UTF-8",
            file=path,
            line=line,
            hint="re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`",
        ) from None
    lines = text.splitlines()
    if any(not ln.strip() for ln in lines):
        items, cur = [], []
        for ln in lines:
            if ln.strip():
                cur.append(ln)
            elif cur:
                items.append("\n".join(cur))
                cur = []
        if cur:
            items.append("\n".join(cur))
        return items
    return [ln for ln in lines if ln.strip()]


def load_benchmark_items(path: str | os.PathLike[str], field: str | None = None) -> list[str]:
    """The items of one benchmark file, as texts.

    JSONL and Parquet: one item per row, text from ``field`` (default: the first of
    ``DEFAULT_FIELDS`` present); list fields are joined with spaces. Plain text: one item
    per paragraph (blank-line separated), or per line when the file has no blank lines.
    """
    p = Path(path)
    if compression_of(p) is not None:  # HumanEval.jsonl.gz as published: read it as is
        with tempfile.TemporaryDirectory(prefix="corpus-bench-") as tmp:
            plain = decompressed(p, tmp)
            try:
                return load_benchmark_items(plain, field)
            except InputError as exc:
                first = exc.problems[0]  # name the file the user gave (line: of its content)
                raise InputError(first.message, file=p, line=first.line, hint=first.hint) from None
    fmt = table_format(p)
    if fmt == "text":
        return _text_items(p)
    frame = read_parquet(p) if fmt == "parquet" else read_jsonl(p)
    name = field
    if name is None:
        name = next((c for c in DEFAULT_FIELDS if c in frame.columns), None)
        if name is None:
            raise InputError(
                f"no text field found (columns: {', '.join(frame.columns)})",
                file=p,
                hint="pass --field NAME to say which column holds the benchmark text",
            )
    require_text_column(frame.columns, name, file=p, option="--field")
    col = frame[name]
    if isinstance(col.dtype, pl.List):
        col = col.cast(pl.List(pl.String)).list.join(" ")
    elif col.dtype != pl.String:
        col = col.cast(pl.String)
    return col.fill_null("").to_list()


@dataclass
class BenchmarkIndex:
    """Hashed n-grams of every benchmark item, sorted for vectorised lookup."""

    files: list[str]
    ngram: int
    keys: np.ndarray  # uint64, sorted
    item: np.ndarray  # int64 global item number of each key
    pos: np.ndarray  # int64 word position of each key in its item
    short: dict[int, tuple[np.ndarray, np.ndarray]]  # length -> (sorted keys, global item)
    seeds: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None  # fuzzy: n, keys, item, pos
    tokens: Tokens  # words of every item, for verification and fuzzy regions
    item_file: np.ndarray  # int32 file number of each global item
    item_local: np.ndarray  # int64 index of each global item within its file
    items_per_file: list[int] = field(default_factory=list)
    skipped_short: int = 0

    @property
    def n_items(self) -> int:
        return len(self.item_file)


def _sorted(keys: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    order = np.argsort(keys, kind="stable")
    return (keys[order], *[o[order] for o in others])


def build_index(
    files: Sequence[str | os.PathLike[str]],
    settings: DecontamSettings | None = None,
    *,
    field: str | None = None,
) -> BenchmarkIndex:
    """Read benchmark files and index their n-grams (and fuzzy seeds when enabled)."""
    settings = settings or DecontamSettings()
    paths = benchmark_files(files)
    field = field or settings.text_field
    texts: list[str] = []
    item_file: list[np.ndarray] = []
    item_local: list[np.ndarray] = []
    per_file = []
    for i, p in enumerate(paths):
        items = load_benchmark_items(p, field)
        texts.extend(items)
        item_file.append(np.full(len(items), i, dtype=np.int32))
        item_local.append(np.arange(len(items), dtype=np.int64))
        per_file.append(len(items))
    tokens = tokenize(texts)
    wh = word_hashes(tokens)
    n = settings.ngram
    grams = ngram_hashes(tokens, n, short=False, hashes=wh, with_positions=True)
    g_item = np.repeat(np.arange(len(texts), dtype=np.int64), grams.counts)
    keys, item, pos = _sorted(grams.hashes, g_item, grams.positions)

    counts = tokens.counts
    short_mask = (counts >= settings.min_words) & (counts < n)
    short: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if short_mask.any():
        whole = ngram_hashes(tokens, n, short=True, hashes=wh)
        for length in np.unique(counts[short_mask]).tolist():
            sel = np.flatnonzero(counts == length)
            k, it = _sorted(whole.hashes[whole.offsets[sel]], sel.astype(np.int64))
            short[int(length)] = (k, it)
    skipped = int(((counts > 0) & (counts < settings.min_words)).sum())

    seeds = None
    if settings.fuzzy and settings.fuzzy_ngram < n:
        sg = ngram_hashes(tokens, settings.fuzzy_ngram, short=False, hashes=wh, with_positions=True)
        s_item = np.repeat(np.arange(len(texts), dtype=np.int64), sg.counts)
        sk, si, sp = _sorted(sg.hashes, s_item, sg.positions)
        seeds = (settings.fuzzy_ngram, sk, si, sp)
    return BenchmarkIndex(
        files=[str(p) for p in paths],
        ngram=n,
        keys=keys,
        item=item,
        pos=pos,
        short=short,
        seeds=seeds,
        tokens=tokens,
        item_file=np.concatenate(item_file) if item_file else np.zeros(0, np.int32),
        item_local=np.concatenate(item_local) if item_local else np.zeros(0, np.int64),
        items_per_file=per_file,
        skipped_short=skipped,
    )


# -- Scanning documents ---------------------------------------------------------------------


def _lookup(
    doc_hashes: np.ndarray,
    doc_of: np.ndarray,
    doc_pos: np.ndarray,
    keys: np.ndarray,
    item: np.ndarray,
    ipos: np.ndarray | None,
) -> tuple[np.ndarray, ...]:
    """All (doc, doc position, item, item position) pairs whose hashes match."""
    if len(keys) == 0 or len(doc_hashes) == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e, e, e
    left = np.searchsorted(keys, doc_hashes, side="left")
    right = np.searchsorted(keys, doc_hashes, side="right")
    found = right > left
    if not found.any():
        e = np.zeros(0, dtype=np.int64)
        return e, e, e, e
    left, right = left[found], np.minimum(right[found], left[found] + _MAX_ITEMS_PER_NGRAM)
    reps = right - left
    k = np.repeat(left, reps) + (
        np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
    )
    d = np.repeat(doc_of[found], reps)
    p = np.repeat(doc_pos[found], reps)
    ip = ipos[k] if ipos is not None else np.zeros(len(k), dtype=np.int64)
    return d, p, item[k], ip


def _words(tokens: Tokens, i: int, lo: int, hi: int) -> list[str]:
    return tokens.words_of(i)[max(0, lo) : max(0, hi)]


def _fuzzy_score(
    doc_tokens: Tokens, d: int, pos: int, length: int, index: BenchmarkIndex, item: int, ipos: int
) -> float:
    from rapidfuzz import fuzz

    span, margin = 100, 25
    item_words = _words(index.tokens, item, ipos - span, ipos + length + span)
    region = _words(doc_tokens, d, pos - span - margin, pos + length + span + margin)
    if not item_words or not region:
        return 0.0
    return float(fuzz.partial_ratio(" ".join(item_words), " ".join(region)))


def scan_texts(
    texts: Sequence[str | None], index: BenchmarkIndex, settings: DecontamSettings
) -> pl.DataFrame:
    """Hits of a batch of texts: one row per (text, benchmark item) with ``row`` = position
    in ``texts``, plus the columns of ``HIT_COLUMNS`` except ``id``."""
    tokens = tokenize(texts)
    wh = word_hashes(tokens)
    n = index.ngram
    found: list[tuple[np.ndarray, ...]] = []

    def scan(size: int, keys: np.ndarray, item: np.ndarray, ipos: np.ndarray | None, method: str):
        g = ngram_hashes(tokens, size, short=False, hashes=wh, with_positions=True)
        doc_of = np.repeat(np.arange(len(texts), dtype=np.int64), g.counts)
        d, p, it, ip = _lookup(g.hashes, doc_of, g.positions, keys, item, ipos)
        if len(d):
            found.append(
                (
                    d,
                    p,
                    it,
                    ip,
                    np.full(len(d), size, dtype=np.int64),
                    np.full(len(d), method, dtype=object),
                )
            )

    scan(n, index.keys, index.item, index.pos, "ngram")
    for length, (keys, item) in index.short.items():
        scan(length, keys, item, None, "short")
    if index.seeds is not None:
        sn, sk, si, sp = index.seeds
        scan(sn, sk, si, sp, "fuzzy")
    if not found:
        return _empty_hits(with_row=True)
    cols = [np.concatenate(c) for c in zip(*found, strict=True)]
    frame = pl.DataFrame(
        {
            "row": cols[0],
            "position": cols[1],
            "gitem": cols[2],
            "ipos": cols[3],
            "ngram_words": cols[4],
            "method": pl.Series(cols[5].tolist(), dtype=pl.String),
        }
    )
    method_rank = pl.col("method").replace_strict(
        {"ngram": 0, "short": 1, "fuzzy": 2}, return_dtype=pl.Int8
    )
    frame = frame.with_columns(method_rank.alias("_m")).sort("row", "gitem", "_m", "position")
    # Matches per (doc, item) count only the exact methods; fuzzy seeds are candidates.
    grouped = frame.group_by("row", "gitem", maintain_order=True).agg(
        pl.col("position").first(),
        pl.col("ipos").first(),
        pl.col("ngram_words").first(),
        pl.col("method").first(),
        (pl.col("_m") < 2).sum().alias("matches"),
    )
    out_rows = []
    for r in grouped.iter_rows(named=True):
        d, item = int(r["row"]), int(r["gitem"])
        pos, length, ipos = int(r["position"]), int(r["ngram_words"]), int(r["ipos"])
        doc_words = _words(tokens, d, pos, pos + length)
        item_words = _words(index.tokens, item, ipos, ipos + length)
        if doc_words != item_words:  # a 64-bit hash collision: not a real overlap
            continue
        score = None
        if settings.fuzzy:
            score = _fuzzy_score(tokens, d, pos, length, index, item, ipos)
            if r["method"] == "fuzzy" and score < settings.fuzzy_threshold:
                continue
        elif r["method"] == "fuzzy":
            continue
        out_rows.append(
            {
                "row": d,
                "benchmark": index.files[int(index.item_file[item])],
                "item": int(index.item_local[item]),
                "ngram": " ".join(doc_words),
                "position": pos,
                "ngram_words": length,
                "matches": int(r["matches"]),
                "method": r["method"],
                "fuzzy_score": score,
            }
        )
    if not out_rows:
        return _empty_hits(with_row=True)
    return pl.DataFrame(out_rows, schema=_hit_schema(with_row=True))


def _hit_schema(with_row: bool = False, id_dtype: pl.DataType = pl.String) -> dict[str, Any]:
    schema: dict[str, Any] = {"row": pl.Int64} if with_row else {"id": id_dtype}
    schema.update(
        {
            "benchmark": pl.String,
            "item": pl.Int64,
            "ngram": pl.String,
            "position": pl.Int64,
            "ngram_words": pl.Int64,
            "matches": pl.Int64,
            "method": pl.String,
            "fuzzy_score": pl.Float64,
        }
    )
    return schema


def _empty_hits(with_row: bool = False, id_dtype: pl.DataType = pl.String) -> pl.DataFrame:
    return pl.DataFrame(schema=_hit_schema(with_row, id_dtype))


# -- Workers ------------------------------------------------------------------------------------

_INDEX: BenchmarkIndex | None = None


def _init_decontam_worker(index: BenchmarkIndex) -> None:
    global _INDEX
    _init_worker()
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
    index = index if index is not None else _INDEX
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


def _settings_dict(s: DecontamSettings) -> dict[str, Any]:
    keys = ("ngram", "min_words", "fuzzy", "fuzzy_ngram", "fuzzy_threshold")
    return {k: getattr(s, k) for k in keys}


def _attach_ids(hits: pl.DataFrame, ids: pl.Series) -> pl.DataFrame:
    rows = hits["row"].to_numpy()
    out = hits.with_columns(ids.gather(rows).alias("id")).drop("row")
    return out.select(list(HIT_COLUMNS)).sort("id", "benchmark", "item")


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
        ids = _generated_ids(hashes).rename(id_column)
        frame = data.with_columns(ids).select([id_column, *data.columns])
    raw = pl.concat(hits_parts) if hits_parts else _empty_hits(with_row=True)
    bad = np.zeros(n, dtype=bool)
    bad[raw["row"].to_numpy()] = True
    hits = _attach_ids(raw, ids)
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
) -> DecontamResult:
    """Decontaminate Parquet/JSONL input of any size into ``outdir``.

    Writes ``clean.parquet`` (rows without hits, every column), ``hits.parquet``
    (``HIT_COLUMNS``) and ``rejected.parquet`` (contaminated rows with stage/reason/detail),
    each atomically.
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
        hint = workers or settings.workers or os.cpu_count() or 1
        size = _task_size(n, settings.partition_size, hint)
        tasks = [
            _Task(p.offset, p.length, settings, text_column, not has_ids, partition=p)
            for p in source.partitions(size, hint)
        ]
        nworkers = max(1, min(hint, len(tasks)))
        parts, hashes = [], np.zeros(n if not has_ids else 0, dtype=np.uint64)
        for offset, hits, th in _run_all(tasks, index, nworkers):
            parts.append(hits)
            if th is not None:
                hashes[offset : offset + len(th)] = th
        if has_ids:
            ids = source.read_columns([id_column])[id_column]
            check_ids(ids, column=id_column, file=source.label)
        else:
            ids = _generated_ids(hashes).rename(id_column)
        raw = pl.concat(parts) if parts else _empty_hits(with_row=True)
        bad = np.zeros(n, dtype=bool)
        bad[raw["row"].to_numpy()] = True
        hits = _attach_ids(raw, ids)
        reasons = _reasons(hits) if hits.height else _reasons(_empty_hits(id_dtype=ids.dtype))
        paths = {"hits": write_parquet_atomic(hits, out / "hits.parquet")}
        paths["clean"], paths["rejected"] = _split_write(
            source, out, bad, ids, has_ids, id_column, reasons
        )
        contaminated = pl.read_parquet(paths["rejected"])
        stats = _stats(n, bad, hits, index, nworkers, t0, settings)
        tax = None
        if "taxonomy_path" in source.columns:
            tax = source.read_columns(["taxonomy_path"])["taxonomy_path"]
        return DecontamResult(None, hits, contaminated, stats, paths, nodes=_nodes(tax, bad))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _split_write(
    source: TableSource,
    out: Path,
    bad: np.ndarray,
    ids: pl.Series,
    has_ids: bool,
    id_column: str,
    reasons: pl.DataFrame,
) -> tuple[Path, Path]:
    schema = source.schema
    if not has_ids:
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
    id_arrow = ids.to_arrow().cast(pa.string()) if not has_ids else None
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
