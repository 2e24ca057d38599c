"""Decontamination's algorithm: benchmark files and their items, the sorted index of their
word n-gram hashes, and ``scan_texts`` (exact n-gram hits plus the fuzzy check) over a list
of texts. No I/O policy: ``builder.decontam`` maps it over partitions and writes the files.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from builder.dedup.normalize import Tokens, ngram_hashes, tokenize, word_hashes
from builder.errors import InputError
from builder.io_tables import (
    JSONL_SUFFIXES,
    PARQUET_SUFFIXES,
    TEXT_SUFFIXES,
    _is_table_file,
    compression_of,
    decompressed,
    read_jsonl,
    read_parquet,
    require_text_column,
    table_format,
)
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
    #: ``prefilter`` tables, built on first use, by the id of their keys array.
    prefilters: dict[int, tuple[np.ndarray, np.ndarray, np.uint64]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def n_items(self) -> int:
        return len(self.item_file)

    def prefilter(self, keys: np.ndarray) -> tuple[np.ndarray, np.uint64]:
        """A table marking the top bits of every hash in ``keys`` (one of this index's
        sorted key arrays) and the shift that gives a hash's top bits: a document n-gram
        whose entry is False is in none of them, which one lookup in a table of at most
        16 MB tells, where a binary search over ``keys`` takes ~20 random reads. The table
        has ~8 entries a key, so ~1/8 of the n-grams of a clean document reach the search."""
        held = self.prefilters.get(id(keys))
        if held is None or held[0] is not keys:
            bits = int(min(24, max(12, np.ceil(np.log2(max(1, len(keys)) * 8)))))
            shift = np.uint64(64 - bits)
            table = np.zeros(1 << bits, dtype=bool)
            table[(keys.astype(np.uint64, copy=False) >> shift).astype(np.intp)] = True
            held = self.prefilters[id(keys)] = (keys, table, shift)
        return held[1], held[2]


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
    prefilter: tuple[np.ndarray, np.uint64] | None = None,
) -> tuple[np.ndarray, ...]:
    """All (doc, doc position, item, item position) pairs whose hashes match, in the order
    of ``doc_hashes``. ``prefilter``: ``BenchmarkIndex.prefilter(keys)``, which rules out
    most hashes before the binary search."""
    e = np.zeros(0, dtype=np.int64)
    if len(keys) == 0 or len(doc_hashes) == 0:
        return e, e, e, e
    if prefilter is not None:
        table, shift = prefilter
        maybe = np.flatnonzero(table[(doc_hashes.astype(np.uint64, copy=False) >> shift)])
        doc_hashes, doc_of, doc_pos = doc_hashes[maybe], doc_of[maybe], doc_pos[maybe]
    left = np.searchsorted(keys, doc_hashes, side="left")
    found = keys[np.minimum(left, len(keys) - 1)] == doc_hashes
    if not found.any():
        return e, e, e, e
    right = np.searchsorted(keys, doc_hashes[found], side="right")
    left, right = left[found], np.minimum(right, left[found] + _MAX_ITEMS_PER_NGRAM)
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
    return scan_tokens(tokenize(texts), index, settings)


def scan_tokens(tokens: Tokens, index: BenchmarkIndex, settings: DecontamSettings) -> pl.DataFrame:
    """``scan_texts`` of texts already tokenized (``tokenize``: dedup's signature tasks scan
    the words they made for MinHash, so decontamination need not read the texts again)."""
    n_texts = len(tokens.counts)
    wh = word_hashes(tokens)
    n = index.ngram
    found: list[tuple[np.ndarray, ...]] = []

    def scan(size: int, keys: np.ndarray, item: np.ndarray, ipos: np.ndarray | None, method: str):
        g = ngram_hashes(tokens, size, short=False, hashes=wh, with_positions=True)
        doc_of = np.repeat(np.arange(n_texts, dtype=np.int64), g.counts)
        d, p, it, ip = _lookup(
            g.hashes, doc_of, g.positions, keys, item, ipos, index.prefilter(keys)
        )
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


def attach_ids(hits: pl.DataFrame, ids: pl.Series) -> pl.DataFrame:
    """Hits with ``row`` (a position in ``ids``) replaced by the row's id, as written to
    ``hits.parquet`` (``HIT_COLUMNS``, sorted by id, benchmark and item)."""
    return hits_with_ids(hits, ids.gather(hits["row"].to_numpy()))


def hits_with_ids(hits: pl.DataFrame, hit_ids: pl.Series) -> pl.DataFrame:
    """``attach_ids`` given each hit's id (``hit_ids``, in the hits' order)."""
    out = hits.with_columns(hit_ids.alias("id")).drop("row")
    return out.select(list(HIT_COLUMNS)).sort("id", "benchmark", "item")


def _empty_hits(with_row: bool = False, id_dtype: pl.DataType = pl.String) -> pl.DataFrame:
    return pl.DataFrame(schema=_hit_schema(with_row, id_dtype))


# -- Workers ------------------------------------------------------------------------------------

_INDEX: BenchmarkIndex | None = None


@dataclass(frozen=True)
class IndexSpec:
    """How a worker builds the benchmark index itself (``load_index``) rather than receive
    it with every task: the benchmark files, settings and field ``build_index`` was given,
    and ``token``, a hash of the files' contents and those settings."""

    files: tuple[str, ...]
    settings: DecontamSettings
    field: str | None
    token: str


def index_spec(
    files: Sequence[str], settings: DecontamSettings, field: str | None = None
) -> IndexSpec:
    """The ``IndexSpec`` of an index built from ``files`` (already expanded, as
    ``BenchmarkIndex.files``) with ``settings`` and ``field``."""
    from builder.records import sha256_hex
    from builder.util.files import file_sha256

    token = sha256_hex(
        {
            "files": [[f, file_sha256(Path(f))] for f in files],
            "settings": settings.model_dump(mode="json"),
            "field": field,
        }
    )
    return IndexSpec(tuple(files), settings, field, token)


#: The index this process loaded last, by its spec's token (one kept: a new stage run
#: with other benchmarks replaces it).
_LOADED: dict[str, BenchmarkIndex] = {}


def load_index(spec: IndexSpec) -> BenchmarkIndex:
    """The index of ``spec``, built from its files on first use in this process and kept,
    so a worker loads it once however many of the stage's tasks it runs."""
    index = _LOADED.get(spec.token)
    if index is None:
        index = build_index(spec.files, spec.settings, field=spec.field)
        remember_index(spec, index)
    return index


def remember_index(spec: IndexSpec, index: BenchmarkIndex) -> None:
    """Keep ``index`` as this process's index of ``spec`` (the driver, which has built it
    already, then runs its own share of tasks without building it again)."""
    _LOADED.clear()
    _LOADED[spec.token] = index
