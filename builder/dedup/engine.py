"""Exact and near-duplicate removal over tables, streamed in pieces across cores.

Pipeline (memory bounded by arrays, never a Python object per document; signatures and
band keys live in files, not in memory):

1. **Signatures** (``signatures.py``; worker processes or Ray tasks, one task per piece of
   input, ``source.py``): normalise each text, hash its exact key (xxh3-128), compute its
   MinHash signature and band keys, and write them to the work directory, one set of files
   per piece, atomically, with a marker last. A rerun after a kill reuses finished pieces.
2. **Exact groups** (``plan.py``): rows with equal exact keys, found from the pieces' files
   in bounded memory (``keygroups.EqualKeys``: a hash partition spilled to the work
   directory past ``KEY_ROWS`` keys); one representative each. What is held per row is one
   flag (the text has words) and the plan's ``keep``.
   From here on only the rows of duplicate groups are named: their ids (and ``verified``)
   are read from the input at those rows (``rowids.take``), after one pass that checks every
   id a batch at a time, so no column of the whole corpus is held.
3. **Near groups**: candidate pairs from equal band keys among exact representatives with
   words, grouped one bucket at a time from the pieces' bucketed band files
   (``buckets.py``: a shuffle, bounded by bucket size), verified by estimated Jaccard >=
   threshold, joined by union-find (``plan.components``).
4. **Representatives**: in each cluster the row kept is the first by: ``verified`` is True
   (when that column exists), then longest text (characters), then smallest id. Every other
   member is removed and recorded with its cluster, representative, kind (``exact`` when its
   normalised text equals the representative's, else ``near``), estimated Jaccard to the
   representative, and the row it was matched to.

Results do not depend on the number of workers, pieces or buckets, nor on the executor:
every value is computed per row, and ties are broken by id.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from builder.dedup.buckets import bucket_count, find_pairs
from builder.dedup.output import (
    diversity_of,
    node_dup_rates,
    node_dup_rates_of,
    plan_kept_rows,
    with_dup_cluster,
    write_kept,
)
from builder.dedup.plan import (
    Plan,
    RowNames,
    check_ids,
    generated_ids,
    make_plan,
    names_of,
)
from builder.dedup.pool import WorkerPool
from builder.dedup.rowids import check_source_ids, names_on_disk, take
from builder.dedup.signatures import (
    PieceDone,
    PieceRows,
    PieceTask,
    SignatureStore,
    Spec,
    piece_path,
    read_scan_hits,
    run_piece,
)
from builder.dedup.source import (
    ArrowFilesSource,
    Piece,
    check_jsonl_head,
    jsonl_error,
    jsonl_pieces,
    memory_pieces,
    parquet_pieces,
    plain_jsonl_inputs,
    read_jsonl_piece,
)
from builder.dedup.stats import CLUSTER_COLUMNS, DedupResult, DedupStats, settings_dict
from builder.errors import InputError
from builder.io_tables import (
    TableSource,
    check_text_dtype,
    open_table,
    read_table,
    require_text_column,
    write_parquet_atomic,
)
from builder.settings.dedup import DedupSettings
from builder.util.faults import fault_point
from builder.util.files import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from builder.decontam_index import IndexSpec

__all__ = [
    "CLUSTER_COLUMNS",
    "DedupResult",
    "DedupStats",
    "TaskMap",
    "check_ids",
    "dedup_files",
    "dedup_table",
]

ProgressFn = Callable[[int, int], None]

#: Maps a function over tasks elsewhere, yielding results as they finish (an executor's
#: ``task_map``: Ray tasks). None: this module's own in-process or process-pool map.
TaskMap = Callable[[Callable[[Any], Any], Sequence[Any]], Iterator[Any]]

#: The folder (inside the output directory) holding the intermediates until the run ends.
WORK_DIR = "dedup-partial"


def _task_size(n: int, partition_size: int, workers: int | None) -> int:
    """Rows per task: at most ``partition_size``, small enough to give every worker about
    four tasks (load balance), but not below 2,000 rows (per-task overhead)."""
    w = workers or os.cpu_count() or 1
    if w <= 1:
        return partition_size
    return max(1, min(partition_size, max(2_000, -(-n // (4 * w)))))


def _resolve_workers(workers: int | None, settings: DedupSettings, tasks: int) -> int:
    w = workers or settings.workers or os.cpu_count() or 1
    return max(1, min(int(w), max(tasks, 1)))


@dataclass
class _Input:
    """The planned input: its pieces, and the table once known (Parquet: at once; plain
    JSONL: after the pieces are parsed)."""

    pieces: list[Piece]
    originals: list[Path]
    source: TableSource | None
    rows_estimate: int


def _plan_input(
    input_path: str | os.PathLike[str],
    text_column: str,
    work: Path,
    settings: DedupSettings,
) -> _Input:
    jsonl = plain_jsonl_inputs(input_path)
    if jsonl is not None:
        check_jsonl_head(jsonl, text_column)
        pieces, estimate = jsonl_pieces(jsonl, settings.partition_size)
        return _Input(pieces, jsonl, None, estimate)
    source = open_table(
        input_path,
        text_column=text_column,
        workdir=work / "converted",
        partition_size=settings.partition_size,
    )
    pieces = parquet_pieces(source, settings.partition_size)
    return _Input(pieces, list(source.original), source, source.num_rows)


def _pool_of(workers: int, given: WorkerPool | None) -> WorkerPool:
    """``given`` when it has ``workers`` workers, else a new pool (``given`` is closed)."""
    if given is not None:
        if given.workers == workers:
            return given
        given.close(wait=False)
    return WorkerPool(workers)


def _input_identity(paths: Sequence[Path]) -> list[list[Any]]:
    out = []
    for p in paths:
        st = p.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


def _open_work(work: Path, key: dict[str, Any]) -> None:
    """Use ``work`` for this run: keep it when its key matches (a resumed run), else empty
    it. The key names the inputs (path, size, mtime), the signature settings and the
    pieces, so finished pieces are only ever reused for exactly the same work."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    marker = work / "key.json"
    if marker.exists():
        try:
            if json.loads(marker.read_text()).get("digest") == digest:
                return
        except (OSError, ValueError):
            pass
    if work.exists():
        for p in work.iterdir():
            if p.name != "converted":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps({"digest": digest, "key": key}, default=str))


def _spec(settings: DedupSettings, hashfunc: Callable[[bytes], int] | None, buckets: int) -> Spec:
    return Spec(
        num_perm=settings.num_perm,
        seed=settings.seed,
        shingle_size=settings.shingle_size,
        mode=settings.mode,
        scheme=settings.scheme,
        bands=settings.bands,
        rows=settings.rows,
        buckets=buckets,
        hashfunc=hashfunc,
    )


def _run_pieces(
    tasks: list[PieceTask], task_map: TaskMap, progress: ProgressFn | None, total: int
) -> list[PieceDone]:
    """Every piece's marker, in piece order; a JSONL piece that did not parse is the user's
    error, named by its first bad line."""
    done: dict[int, PieceDone] = {}
    rows = 0
    by_index = {t.piece.index: t for t in tasks}
    for res in task_map(run_piece, tasks):
        if res.error is not None:
            task = by_index[res.index]
            if res.error.startswith("text dtype"):
                frame = read_jsonl_piece(task.piece)
                column = task.text_column
                check_text_dtype(frame.schema[column], column, file=task.piece.file)
            raise jsonl_error(task.piece.file, res.error)
        done[res.index] = res
        rows += res.rows
        fault_point("dedup.piece")
        if progress is not None:
            progress(rows, max(rows, total))
    return [done[t.piece.index] for t in tasks]


def _jsonl_source(originals: list[Path], work: Path, done: list[PieceDone]) -> ArrowFilesSource:
    """The parsed JSONL pieces as one table (schemas unified as the serial reader would)."""
    files = [piece_path(work, d.index, "table.arrow") for d in done if d.rows]
    if not files:
        raise InputError("input has no rows", file=originals[0], hint="give at least one row")
    return ArrowFilesSource.open(files, originals)


@dataclass
class _Signed:
    """The signature phase's outcome: where the files are, the rows' facts read from them
    (``PieceRows``), and the whole columns asked for (text hashes, openers)."""

    work: Path
    offsets: np.ndarray
    rows: PieceRows
    text_hash: np.ndarray | None
    openers: pl.DataFrame | None
    pieces: int
    reused: int
    seconds: float


def _sign(
    pieces: list[Piece],
    work: Path,
    spec: Spec,
    *,
    text_column: str,
    want_text_hash: bool,
    opener_words: int | None,
    task_map: TaskMap,
    progress: ProgressFn | None,
    total: int,
    texts: pl.Series | None = None,
    scan: IndexSpec | None = None,
) -> tuple[_Signed, list[PieceDone]]:
    t0 = time.perf_counter()
    tasks = [
        PieceTask(p, spec, str(work), text_column, want_text_hash, opener_words, texts, scan)
        for p in pieces
    ]
    done = _run_pieces(tasks, task_map, progress, total)
    offsets = np.zeros(len(done) + 1, dtype=np.int64)
    np.cumsum([d.rows for d in done], out=offsets[1:])
    rows = PieceRows(work, offsets)
    # Whole columns only where asked for: ids made from the texts, the diversity report.
    wanted = (["text_hash"] if want_text_hash else []) + (
        ["first_words", "first_sentence"] if opener_words else []
    )
    frame = pl.concat(list(rows.columns(wanted))) if wanted else None
    signed = _Signed(
        work=work,
        offsets=offsets,
        rows=rows,
        text_hash=frame["text_hash"].to_numpy() if frame is not None and want_text_hash else None,
        openers=frame.select("first_words", "first_sentence")
        if frame is not None and opener_words
        else None,
        pieces=len(done),
        reused=sum(not d.computed for d in done),
        seconds=time.perf_counter() - t0,
    )
    return signed, done


def _decide(
    signed: _Signed,
    names: RowNames,
    settings: DedupSettings,
    spec: Spec,
    task_map: TaskMap,
) -> tuple[Plan, int]:
    """Cluster the rows; returns the plan and the largest bucket's entry count."""
    store = SignatureStore(signed.work, signed.offsets, settings.num_perm)
    largest = [0]

    def pairs_of(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pairs, jac, largest[0] = find_pairs(
            signed.work,
            signed.offsets.tolist(),
            mask,
            buckets=spec.buckets,
            bands=settings.bands,
            max_bucket=settings.max_bucket,
            num_perm=settings.num_perm,
            task_map=task_map,
        )
        return pairs, jac

    plan = make_plan(signed.rows, names, store, settings, pairs_of)
    return plan, largest[0]


def _stats(
    settings: DedupSettings, plan: Plan, signed: _Signed, workers: int, largest: int, buckets: int
) -> DedupStats:
    stats = DedupStats(workers=workers, settings=settings_dict(settings))
    stats.rows_in = signed.rows.n
    stats.rows_out = int(plan.keep.sum())
    removed_kind = plan.removed["kind"]
    stats.exact_removed = int((removed_kind == "exact").sum())
    stats.near_removed = int((removed_kind == "near").sum())
    stats.clusters = int(plan.clusters["cluster_id"].n_unique()) if plan.clusters.height else 0
    stats.largest_cluster = (
        int(plan.clusters["cluster_size"].max()) if plan.clusters.height else 0  # type: ignore[arg-type]
    )
    stats.empty_texts = int((~signed.rows.words()).sum())
    stats.candidate_pairs = plan.candidate_pairs
    stats.verified_pairs = plan.verified_pairs
    stats.signature_seconds = signed.seconds
    stats.pieces = signed.pieces
    stats.pieces_reused = signed.reused
    stats.buckets = buckets
    stats.largest_bucket_entries = largest
    return stats


# -- Public API -------------------------------------------------------------------------------


def dedup_table(
    data: pl.DataFrame | str | os.PathLike[str],
    settings: DedupSettings | None = None,
    *,
    text_column: str = "text",
    id_column: str = "id",
    workers: int | None = None,
    hashfunc: Callable[[bytes], int] | None = None,
    progress: ProgressFn | None = None,
    buckets: int | None = None,
) -> DedupResult:
    """Remove exact and near duplicates from a table held in memory.

    ``data`` is a DataFrame or a path (Parquet/JSONL file, directory or glob) small enough
    to load. Rows without an ``id_column`` get stable ids from their text (added to
    ``kept``). ``hashfunc`` only applies to ``settings.mode == "datasketch"``. ``buckets``
    overrides how many buckets the band grouping uses (results never depend on it). For
    inputs too large for memory use ``dedup_files``.
    """
    settings = settings or DedupSettings()
    t0 = time.perf_counter()
    source_file = None
    if not isinstance(data, pl.DataFrame):
        source_file = data
        data = read_table(data)
    require_text_column(data.columns, text_column, file=source_file, option="--text-column")
    check_text_dtype(data.schema[text_column], text_column, file=source_file)
    n = data.height
    if n == 0:
        raise InputError("input has no rows", file=source_file, hint="give at least one row")
    has_ids = id_column in data.columns
    if has_ids:
        check_ids(data[id_column], column=id_column, file=source_file)
    nb = buckets or bucket_count(n, settings.bands)
    spec = _spec(settings, hashfunc, nb)
    pieces = memory_pieces(n, settings.partition_size)
    nworkers = _resolve_workers(workers, settings, len(pieces))
    with tempfile.TemporaryDirectory(prefix="corpus-dedup-") as tmp, WorkerPool(nworkers) as pool:
        signed, _ = _sign(
            pieces,
            Path(tmp),
            spec,
            text_column=text_column,
            want_text_hash=not has_ids,
            opener_words=None,
            task_map=pool.map,
            progress=progress,
            total=n,
            texts=data[text_column],
        )
        if has_ids:
            ids = data[id_column]
            frame = data
        else:
            assert signed.text_hash is not None
            ids = generated_ids(signed.text_hash).rename(id_column)
            frame = data.with_columns(ids).select([id_column, *data.columns])
        verified = frame["verified"] if "verified" in frame.columns else None
        plan, largest = _decide(signed, names_of(ids, verified), settings, spec, pool.map)
    kept = with_dup_cluster(frame.filter(pl.Series(plan.keep)), plan_kept_rows(plan))
    stats = _stats(settings, plan, signed, nworkers, largest, nb)
    nodes = node_dup_rates(
        frame["taxonomy_path"] if "taxonomy_path" in frame.columns else None, plan
    )
    stats.seconds = time.perf_counter() - t0
    return DedupResult(
        kept=kept, clusters=plan.clusters, removed=plan.removed, stats=stats, nodes=nodes
    )


def dedup_files(
    input_path: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    settings: DedupSettings | None = None,
    *,
    text_column: str = "text",
    id_column: str = "id",
    workers: int | None = None,
    hashfunc: Callable[[bytes], int] | None = None,
    progress: ProgressFn | None = None,
    save_signatures: bool = False,
    diversity: bool = False,
    mapper: TaskMap | None = None,
    buckets: int | None = None,
    pool: WorkerPool | None = None,
    scan: IndexSpec | None = None,
) -> DedupResult:
    """Deduplicate Parquet/JSONL input of any size into ``outdir``, in bounded memory.

    Writes ``outdir/kept.parquet`` (surviving rows, every column, plus ``id_column`` when
    the input had none) and ``outdir/clusters.parquet`` (``CLUSTER_COLUMNS``); with
    ``save_signatures`` also ``outdir/signatures.npy`` (rows in input order); with
    ``diversity`` also the diversity report (``outdir/diversity_*.parquet``, see
    ``builder.diversity``). Every file appears atomically.

    Intermediates (per-piece signatures, row arrays and bucketed band keys) are kept in
    ``outdir/dedup-partial/`` until the run ends, so a run killed midway and started again
    with the same input and settings reuses the pieces it had finished. ``mapper`` runs the
    signature and bucket tasks elsewhere (Ray tasks: ``outdir`` must then be on a
    filesystem every worker sees). ``buckets`` overrides the number of band buckets
    (default: about ``buckets.BUCKET_ENTRIES`` band entries each; results never depend on
    it). ``pool``: worker processes the caller started early (so they import while it
    works); used when it has the number of workers this run resolves to, else replaced.
    Either way it is closed here. ``scan``: a decontamination index
    (``builder.decontam_index.IndexSpec``) that the signature tasks also scan every row
    against, with the words they tokenize anyway; the hits, by id, are the result's
    ``scan_hits`` (what ``decontaminate_files(..., hits=...)`` takes instead of a scan).
    """
    settings = settings or DedupSettings()
    t0 = time.perf_counter()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    work = (out / WORK_DIR).resolve()  # absolute: tasks may run elsewhere (Ray workers)
    work.mkdir(exist_ok=True)
    planned = _plan_input(input_path, text_column, work, settings)
    nb = buckets or bucket_count(planned.rows_estimate, settings.bands)
    spec = _spec(settings, hashfunc, nb)
    source = planned.source
    # JSONL: ids are known only once parsed, so the text hash is always computed there.
    want_hash = source is None or id_column not in source.columns
    opener_words = settings.opener_words if diversity else None
    _open_work(
        work,
        {
            "version": 1,
            "inputs": _input_identity(planned.originals),
            "spec": {**asdict(spec), "hashfunc": getattr(hashfunc, "__qualname__", None)},
            "text_column": text_column,
            "text_hash": want_hash,
            "opener_words": opener_words,
            "pieces": [asdict(p) for p in planned.pieces],
            "scan": None if scan is None else scan.token,
        },
    )
    nworkers = _resolve_workers(workers, settings, len(planned.pieces))
    early = pool
    pool = _pool_of(1 if mapper is not None else nworkers, early)
    task_map = mapper or pool.map
    try:
        signed, done = _sign(
            planned.pieces,
            work,
            spec,
            text_column=text_column,
            want_text_hash=want_hash,
            opener_words=opener_words,
            task_map=task_map,
            progress=progress,
            total=planned.rows_estimate if source is None else source.num_rows,
            scan=scan,
        )
        fault_point("dedup.signatures")
        if source is None:
            source = _jsonl_source(planned.originals, work, done)
        require_text_column(source.columns, text_column, file=source.label, option="--text-column")
        check_text_dtype(source.schema.field(text_column).type, text_column, file=source.label)
        if signed.rows.n == 0:
            raise InputError(
                "input has no rows", file=source.label, hint="give a file with at least one row"
            )
        has_ids = id_column in source.columns

        t_plan = time.perf_counter()
        # The ids are checked and read a batch at a time: the plan names only the rows of
        # duplicate groups, so no column of the whole corpus is held (unless ids are made
        # from the texts, or the diversity report wants every row's).
        generated = None
        if has_ids:
            check_source_ids(source, id_column, source.label, work)
            names = names_on_disk(source, id_column)
        else:
            assert signed.text_hash is not None
            generated = generated_ids(signed.text_hash).rename(id_column)
            verified = (
                source.read_columns(["verified"])["verified"]
                if "verified" in source.columns
                else None
            )
            names = names_of(generated, verified)
        plan, largest = _decide(signed, names, settings, spec, task_map)
        pool.close(wait=False)  # the workers exit while the kept rows are written
        scan_hits = None
        if scan is not None:
            from builder.decontam_index import attach_ids, hits_with_ids

            raw = read_scan_hits(work, signed.offsets.tolist())
            if generated is None:
                at = take(source, [id_column], raw["row"].to_numpy())
                scan_hits = hits_with_ids(raw, at[id_column])
            else:
                scan_hits = attach_ids(raw, generated)
        plan_seconds = time.perf_counter() - t_plan

        # The kept rows (the one big write: compressing every kept text) are written on a
        # thread while this one computes the node rates and the report and writes the
        # small files: both sides spend their time in Arrow/Polars code, off the GIL.
        t_write = time.perf_counter()
        with ThreadPoolExecutor(1, thread_name_prefix="dedup-kept") as writer:
            kept = writer.submit(
                write_kept, source, out / "kept.parquet", plan, generated, id_column
            )
            nodes = node_dup_rates_of(source, plan)
            clusters = write_parquet_atomic(plan.clusters, out / "clusters.parquet")
            extra: dict[str, Path] = {}
            if save_signatures:
                store = SignatureStore(work, signed.offsets, settings.num_perm)
                extra["signatures"] = store.write_all(out / "signatures.npy")
            report = None
            if diversity:
                assert signed.openers is not None
                report = diversity_of(signed.openers, source, id_column, generated, plan, settings)
                extra.update({f"diversity_{k}": v for k, v in report.write(out).items()})
            paths = {"kept": kept.result(), "clusters": clusters, **extra}
        write_seconds = time.perf_counter() - t_write
        stats = _stats(settings, plan, signed, nworkers, largest, nb)
        stats.cluster_seconds = plan_seconds
        stats.write_seconds = write_seconds
        stats.seconds = time.perf_counter() - t0
    finally:
        pool.close()
        if early is not None and early is not pool:
            early.close()  # a replaced early pool: wait for its workers' exit too
    # Finished: the intermediates have served (a kill before this line keeps them).
    shutil.rmtree(work, ignore_errors=True)
    return DedupResult(
        kept=None,
        clusters=plan.clusters,
        removed=plan.removed,
        stats=stats,
        paths=paths,
        nodes=nodes,
        diversity=report,
        scan_hits=scan_hits,
    )
