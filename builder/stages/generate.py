"""Stage ``generate``: the units of each walk partition -> requests -> the engine -> one
generation partition ``work/generate/part-NNNNN.parquet`` per unit partition.

Partition ``k`` holds the rows of unit partition ``k``'s plan (all evolution waves) in plan
order, so the corpus order never depends on completion order. While a partition is being
generated its results are journaled to ``work/generate/_journal/NNNNN-MMMMM.arrow``
(Arrow IPC files, uncompressed) every ``[run] flush_rows`` results (or every few seconds);
the partition is then assembled from the journal's tables in plan order (each result is
converted to Arrow once) and written (zstd Parquet) on a background thread while the next
partition is planned and sent; once it is in place the journal is removed.
Resume: a request with a finished row (same prompt and model) in the partition or its
journal is not sent again; results a ``kill -9`` lost before their journal flush are
answered by the LLM cache. Memory holds one unit partition's results (as Arrow tables;
Python rows only for rows read back and for the parents of the next evolve wave).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from builder.errors import BudgetExceeded, LLMError
from builder.records import GENERATED_SCHEMA, ChatRequest, decode_row, to_table
from builder.stages.base import RunContext, Stage
from builder.stages.walk import read_units, unit_parts
from builder.util.faults import fault_point
from builder.util.files import atomic_write
from builder.util.partitions import list_parts, part_name, write_table

if TYPE_CHECKING:  # pragma: no cover
    from builder.generate_ahead import Planner
    from builder.templates import TemplateSet

JOURNAL = "_journal"
#: Journal files: Arrow IPC (what this version writes), and Parquet (what versions before it
#: wrote; still read, so a run they left unfinished resumes).
JOURNAL_SUFFIXES = (".arrow", ".parquet")
JOURNAL_RE = re.compile(r"^(\d{5,})-(\d{5,})\.(?:arrow|parquet)$")
FLUSH_S = 5.0


class _Fresh(NamedTuple):
    """A result of this run, kept as its place in the journal's tables (not as a row)."""

    table: int  # index in ``_Journal.tables``
    index: int  # row in that table
    status: str
    error: str | None
    row: dict[str, Any] | None  # the row itself, only for a parent of the next evolve wave


@dataclass
class GenerateStats:
    """Counts of one run of the stage (its counters: printed by ``corpus generate``, saved
    in the stage's marker and read by the report)."""

    planned: int = 0
    reused: int = 0
    sent: int = 0
    received: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    waves: int = 0
    cached: int = 0
    cost: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "planned": self.planned,
            "reused": self.reused,
            "sent": self.sent,
            "received": self.received,
            "by_status": dict(sorted(self.by_status.items())),
            "by_kind": dict(sorted(self.by_kind.items())),
            "waves": self.waves,
            "cached": self.cached,
            "cost": round(self.cost, 6),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


class _Journal:
    """Results of one partition in flight, saved in small atomic Arrow IPC files.

    The files are uncompressed Arrow IPC, not Parquet: they live until the partition is
    written and are only read back by a resumed run, and writing them is a copy of the
    table's buffers (Parquet's encoding, statistics and dictionary attempts over every
    column cost ~8% of the stage's main thread). The tables written are kept: the partition
    is assembled from them at the end instead of converting every row a second time.
    """

    def __init__(self, directory: Path, part: int, flush_rows: int) -> None:
        self.directory = directory
        self.part = part
        self.flush_rows = flush_rows
        self.rows: list[dict[str, Any]] = []
        self.tables: list[pa.Table] = []
        files = self.files()
        # after the last file left (not their count: a kill while ``clear`` ran leaves gaps)
        self.seq = _journal_key(files[-1])[1] + 1 if files else 0
        self.last = time.monotonic()

    def files(self) -> list[Path]:
        """This partition's journal files, oldest first (either format)."""
        return journal_files(self.directory, self.part)

    def add(self, row: dict[str, Any]) -> tuple[int, int]:
        """Journal ``row``; returns where it lands: (table, row) in ``tables``."""
        where = (len(self.tables), len(self.rows))
        self.rows.append(row)
        if len(self.rows) >= self.flush_rows or time.monotonic() - self.last >= FLUSH_S:
            self.flush()
        return where

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.rows:
            return
        path = self.directory / f"{self.part:05d}-{self.seq:05d}{JOURNAL_SUFFIXES[0]}"
        table = to_table(self.rows, GENERATED_SCHEMA)
        atomic_write(path, lambda tmp: _write_ipc(table, tmp))
        self.tables.append(table)
        self.seq += 1
        self.rows = []
        fault_point("generate.journal")

    def clear(self) -> None:
        for f in self.files():
            f.unlink()


def journal_files(directory: Path, part: int | None = None) -> list[Path]:
    """The journal files in ``directory`` (of partition ``part`` only, if given), by
    partition then sequence number: later files supersede earlier ones."""
    if not directory.is_dir():
        return []
    found = [f for f in directory.iterdir() if JOURNAL_RE.match(f.name)]
    if part is not None:
        found = [f for f in found if _journal_key(f)[0] == part]
    return sorted(found, key=_journal_key)


def _journal_key(path: Path) -> tuple[int, int]:
    """(partition, sequence number) of a journal file's name."""
    m = JOURNAL_RE.match(path.name)
    assert m is not None
    return int(m.group(1)), int(m.group(2))


def _write_ipc(table: pa.Table, path: Path) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a generation partition (Parquet) or journal file (Arrow IPC or Parquet)."""
    if path.suffix == ".arrow":
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_file(source).read_all().to_pylist()
    return pq.read_table(path).to_pylist()


class GenerateStage(Stage):
    """Send the requests of every unit partition and save their results (see module doc)."""

    name = "generate"
    uses_llm = True
    emits_partitions = True  # each part-NNNNN.parquet once its unit partition is done

    def __init__(self) -> None:
        self.stats: GenerateStats | None = None

    def inputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.paths.stage_dir("walk")]

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [self.out_dir(ctx)]

    def fingerprint(self, ctx: RunContext) -> str | None:
        return None  # resumes per request: always looks for unfinished work

    def templates(self, ctx: RunContext) -> TemplateSet:
        from builder.templates import load_templates

        return load_templates(ctx.config.path(ctx.config.generate.templates_dir))

    def planner(self, ctx: RunContext, parts: list[Path], templates: TemplateSet) -> Planner:
        """Who plans the unit partitions: a process one partition ahead when the model is
        the engine and ``[run] workers`` is 2 or more, or 0 (auto) on 3 or more CPUs; else
        this process (see builder.generate_ahead for why not on 2 CPUs)."""
        from builder.generate_ahead import Planner, plan_ahead
        from builder.llm.engine import Engine

        inner = getattr(ctx.llm(), "inner", None)
        engine = inner if isinstance(inner, Engine) else None
        return Planner(
            parts,
            templates,
            ctx.config.path(ctx.config.generate.templates_dir),
            ctx.config.generate,
            engine,
            ahead=engine is not None and plan_ahead(ctx.config.run.workers),
            log=ctx.log,
        )

    def run(self, ctx: RunContext) -> dict[str, Any]:
        stats = self.stats = GenerateStats()
        templates = self.templates(ctx)
        out = self.out_dir(ctx)
        out.mkdir(parents=True, exist_ok=True)
        failures: Counter[str] = Counter()
        answered = [0, 0]  # rows stored, of which failed
        parts = unit_parts(ctx)
        from builder.generate_ahead import few_collections

        planner = self.planner(ctx, parts, templates)
        finisher = _Finisher(ctx)
        finished = False
        try:
            with few_collections():
                for k, upath in enumerate(parts):
                    self._partition(
                        ctx, k, upath, templates, planner, finisher, stats, failures, answered
                    )
            finisher.wait()
            finished = True
            planner.close(wait=True)
        finally:
            finisher.close(quiet=not finished)
            planner.close()
            if stats.sent:
                ctx.did_work = True
        keep = {part_name(k) for k in range(len(parts))}
        for p in list_parts(out):
            if p.name not in keep:
                p.unlink()
        for f in journal_files(out / JOURNAL):
            if _journal_key(f)[0] >= len(parts):
                f.unlink()
        if planner.taken:
            ctx.log(
                f"[generate] {planner.taken} of {len(parts)} unit partition(s) planned "
                "in a planning process"
            )
        ctx.log(
            f"[generate] {stats.planned} request(s) in {stats.waves} wave(s): "
            f"{stats.reused} already done, {stats.sent - stats.cached} sent, "
            f"{stats.cached} from the cache"
        )
        if stats.received and answered[0] and answered[0] == answered[1]:
            first, count = failures.most_common(1)[0]
            raise LLMError(
                f"all {answered[0]} generation request(s) failed (most often: {first} [{count}x])",
                hint="check [llm] base_url and model with `corpus llm check --chat`; finished "
                "work is kept and a rerun retries only the failures",
            )
        return stats.to_dict()

    def _partition(
        self,
        ctx: RunContext,
        k: int,
        upath: Path,
        templates: TemplateSet,
        planner: Planner,
        finisher: _Finisher,
        stats: GenerateStats,
        failures: Counter[str],
        answered: list[int],
    ) -> None:
        from builder.generate import (
            FINISHED_STATUSES,
            plan_transforms,
            prompt_sha256,
            result_row,
        )

        settings = ctx.config.generate
        llm = ctx.llm()
        model = llm.model_name
        out = self.out_dir(ctx)
        target = out / part_name(k)
        if not target.exists():
            ctx.work_ahead()  # a new partition: what follows generate will have work
        journal = _Journal(out / JOURNAL, k, ctx.config.run.flush_rows)
        prior: dict[str, dict[str, Any]] = {}
        old_order: list[str] = []
        if target.exists():
            for row in _read_rows(target):
                prior[row["request_id"]] = row
                old_order.append(row["request_id"])
        for f in journal.files():
            for row in _read_rows(f):
                prior[row["request_id"]] = row  # later rows supersede earlier ones
        units = read_units(upath)
        units_by_id = {u.unit_id: u for u in units}
        # every planned request in plan order: its row read back from an earlier run, this
        # run's result, or None (no result yet)
        rows: dict[str, dict[str, Any] | _Fresh | None] = {}
        fresh = 0
        wave: list[ChatRequest] = planner.plan(k, units)
        step = 0
        while wave:
            finisher.check()  # the previous partition's write failed: stop now
            stats.waves = max(stats.waves, step + 1)
            stats.planned += len(wave)
            todo = []
            for r in wave:
                old = prior.get(r.id)
                if (
                    old is not None
                    and old.get("status") in FINISHED_STATUSES
                    and old.get("prompt_sha256") == prompt_sha256(r, model)
                ):
                    rows[r.id] = decode_row(old)
                else:
                    rows[r.id] = None
                    todo.append(r)
            stats.reused += len(wave) - len(todo)
            if todo:
                remaining = llm.remaining()
                if remaining is not None and remaining <= 0:
                    journal.flush()
                    raise BudgetExceeded(
                        f"budget reached before {len(todo)} request(s) were sent",
                        hint="raise --max-cost and rerun: finished documents are kept",
                    )
                pending = {r.id: r for r in todo}
                stats.sent += len(todo)
                try:
                    for result in llm.run(todo):
                        request = pending.pop(result.request_id)
                        stats.received += 1
                        stats.by_status[result.status] += 1
                        stats.cost += result.cost or 0.0
                        stats.cached += bool(result.cached)
                        stats.prompt_tokens += result.prompt_tokens or 0
                        stats.completion_tokens += result.completion_tokens or 0
                        if result.status == "skipped":
                            continue  # not sent (budget, interrupt): the next run sends it
                        row = result_row(request, result, llm)
                        stats.by_kind[row["kind"]] += 1
                        table, index = journal.add(row)
                        parent = settings.evolve and row["kind"] == "exercise"
                        rows[request.id] = _Fresh(
                            table, index, row["status"], row["error"], row if parent else None
                        )
                        fresh += 1
                finally:
                    journal.flush()
            step += 1
            if not settings.evolve:
                break
            parents = []
            for r in wave:
                got = rows.get(r.id)
                row = got.row if isinstance(got, _Fresh) else got
                if row is not None:
                    parents.append(row)
            wave = plan_transforms(parents, units_by_id, templates, settings, step)
        done = {rid: got for rid, got in rows.items() if got is not None}
        answered[0] += len(done)
        for got in done.values():
            status, error = (
                (got.status, got.error)
                if isinstance(got, _Fresh)
                else (got.get("status"), got.get("error"))
            )
            if status == "failed":
                answered[1] += 1
                failures[str(error or "unknown error")] += 1
        changed = fresh or list(done) != old_order
        finisher.submit(target, journal, list(done.values()) if changed else None)


class _Finisher:
    """Finishes the generated partitions on a background thread, one at a time, in order:
    assemble and write the partition file (zstd Parquet: pyarrow releases the GIL while it
    encodes and compresses), then remove its journal, then tell the stages that follow
    (``ctx.partition_written``). Meanwhile the main thread plans and sends the next
    partition's requests, the stage's critical path.

    At most one partition is in flight (``submit`` waits for the one before), so memory
    holds at most two partitions' results. A write's error is raised by the next ``check``,
    ``submit`` or ``wait``. A kill at any point leaves the partition file whole or absent
    (atomic write) and its journal in place until the file is, so a resume loses nothing.
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    def submit(self, target: Path, journal: _Journal, done: list[Any] | None) -> None:
        """Finish partition ``target``: write ``done`` (its rows in plan order, as in
        ``_assemble``; None: the file already holds them) and clear ``journal``."""
        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate-write")
        self._pending = self._pool.submit(_finish, self.ctx, target, journal, done)

    def check(self) -> None:
        """Raise the error of a finished write (nothing while it runs)."""
        if self._pending is not None and self._pending.done():
            self.wait()

    def wait(self) -> None:
        """Wait for the write in flight; raise its error. (Interrupted while waiting, it
        is still in flight: ``close`` waits for it again.)"""
        pending = self._pending
        if pending is None:
            return
        try:
            pending.result()
        finally:
            if pending.done():
                self._pending = None

    def close(self, *, quiet: bool = False) -> None:
        """Wait for the write in flight (``quiet``: on the way out of an error or an
        interrupt, log its own error rather than raise it over the first one)."""
        try:
            self.wait()
        except Exception as exc:
            if not quiet:
                raise
            self.ctx.log(f"[generate] writing a partition failed too: {exc!r}")
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False)


def _finish(ctx: RunContext, target: Path, journal: _Journal, done: list[Any] | None) -> None:
    """One partition's end, in this order so a kill between any two steps resumes: the file
    in place, then its journal gone, then the stages that follow told."""
    if done is not None:
        write_table(_assemble(done, journal.tables), target)
    journal.clear()
    ctx.partition_written(target)


def _assemble(done: list[dict[str, Any] | _Fresh], tables: list[pa.Table]) -> pa.Table:
    """The partition's table: ``done`` in order, rows read back from an earlier run
    converted, this run's results taken from the journal's tables (the same table as
    ``to_table`` of all the rows, in one chunk per column, so the same Parquet bytes)."""
    reused = [got for got in done if not isinstance(got, _Fresh)]
    pieces = [to_table(reused, GENERATED_SCHEMA), *tables]
    starts = [0]
    for piece in pieces[:-1]:
        starts.append(starts[-1] + piece.num_rows)
    order: list[int] = []
    n_reused = 0
    for got in done:
        if isinstance(got, _Fresh):
            order.append(starts[got.table + 1] + got.index)
        else:
            order.append(n_reused)
            n_reused += 1
    return pa.concat_tables(pieces).take(pa.array(order, pa.int64())).combine_chunks()


def generated_parts(ctx: RunContext) -> list[Path]:
    """The generation partitions of a run, in walk order."""
    return list_parts(ctx.paths.stage_dir(GenerateStage.name))


def read_run_generated(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every generation row of a run directory by request id (partitions, then journals;
    a later row of an id supersedes an earlier one). For inspection and tests: it holds all
    rows in memory."""
    gen = Path(run_dir) / "work" / GenerateStage.name
    files = [*list_parts(gen), *journal_files(gen / JOURNAL)]
    rows: dict[str, dict[str, Any]] = {}
    for f in files:
        for row in _read_rows(f):
            rows[row["request_id"]] = decode_row(row)
    return rows
