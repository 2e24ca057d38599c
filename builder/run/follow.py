"""Partitioned stages that follow the stage before them, partition by partition.

While ``generate`` runs, the build's process mostly waits on the model: a core is partly
idle for the whole stage. A ``Follower`` fills it. Each time generate has written a
partition, the follower runs filter's task for it, then quality's tasks for what filter
kept, on ``workers`` processes at the lowest CPU priority (``SCHED_IDLE``): they only get
CPU time the build and the model server leave, so the model calls keep their pace. Two of
them fill the gaps one leaves (its reads, its fsyncs, a task's start). On a new run the
build starts them before its first stages (``early_workers``), which use one core: they
import and load the stages' models there, not on generate's busy cores.

It computes each task exactly as the stage's own plan will (``make_task``, inputs taken in
input order, outputs numbered after those of the tasks before) and writes the same record
once the task's files are in place. When the stages then run, they find those tasks
finished and skip them, as after an interrupted run (a task's identity hashes its input
file, not the upstream stage's fingerprint: ``builder.run.partitioned``). So the files are
the same with or without a follower, and a follower that stops early (an error, the end of
generate, Ctrl-C) only leaves more for the stages to do: its errors are not raised here,
since the stage, redoing the task, raises them with its usual context.

At most one task is handed to each worker at a time: when generate fails or is interrupted,
``close`` drops the tasks not started (the stages run them) and waits only for the running
ones; when it succeeds, the follower drains what is left on its workers.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import queue
import threading
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.run.partitioned import finished, make_task, prepare_dirs, record_task, run_task
from builder.run.pool import die_with_parent
from builder.util.faults import fault_point

if TYPE_CHECKING:  # pragma: no cover
    from builder.config import CorpusConfig
    from builder.run.partitioned import PartitionTask
    from builder.stages.base import PartitionStage, RunContext, Stage

#: Where ``SCHED_IDLE`` is missing, the follower's worker runs at this niceness.
FOLLOW_NICE = 19

#: The stage copies the worker keeps (one per followed stage), by follower token.
_STAGES: dict[str, Any] = {}


def _init_worker(
    parent: int,
    stages: list[PartitionStage] | None = None,
    config: CorpusConfig | None = None,
) -> None:
    """The worker runs only on CPU time nobody else wants: Linux's ``SCHED_IDLE`` policy
    (a waking task of the build or of the model server preempts it at once), else the
    lowest priority (``nice``). With ``stages``, it then preloads them (``start_workers``);
    an error there is left to the tasks, which load the same things and report it."""
    die_with_parent(parent)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux
        with contextlib.suppress(OSError):
            os.nice(FOLLOW_NICE)
    if stages is not None and config is not None:
        with contextlib.suppress(Exception):
            for stage in stages:
                stage.preload(config)


def _warm(lanes: list[tuple[str, PartitionStage]], ctx: RunContext) -> dict[str, str | None]:
    """Warm the worker's copies of the followed stages (``PartitionStage.warm``), the ones
    its tasks then use; returns what each loaded: None for a stage this process has warmed
    already (the pool may hand one process two of the follower's warm tasks)."""
    loaded: dict[str, str | None] = {}
    for token, stage in lanes:
        if token in _STAGES:
            loaded[stage.name] = None
        else:
            _STAGES[token] = stage
            loaded[stage.name] = stage.warm(ctx)
    return loaded


def _new_pool(workers: int, *preload: Any) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(os.getpid(), *preload),
    )


def _started() -> int:
    """A task that only makes the pool start a worker (which preloads as it starts)."""
    return os.getpid()


def start_workers(
    stages: Sequence[PartitionStage], config: CorpusConfig, workers: int
) -> ProcessPoolExecutor:
    """A follower's ``workers`` processes, started now, each loading what ``stages`` load
    once per process (``PartitionStage.preload``) at ``SCHED_IDLE`` as it starts: the build
    starts them before its first stages, which run on one core, so that work is off
    generate's busy cores. Hand the pool to ``following``."""
    pool = _new_pool(workers, list(stages), config)
    for _ in range(workers):  # the pool starts a process for each task no worker is free for
        pool.submit(_started)
    return pool


def _run(token: str, stage: PartitionStage, ctx: RunContext, task: PartitionTask) -> Any:
    """One task in the follower's worker, with the first copy of its stage it received (what
    the stage loads once, e.g. the embedding model, stays loaded for its later tasks)."""
    kept = _STAGES.setdefault(token, stage)
    return {**run_task(kept, ctx, task), "worker": os.getpid(), "followed": True}


@dataclass
class _Lane:
    """One following stage: where its next task starts, and the records not yet passed on
    to the stage after it (which takes them in input order)."""

    stage: PartitionStage
    fingerprint: str | None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    index: int = 0
    first: int = 0
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    passed: int = 0


class Follower:
    """Run ``stages`` (each reading the one before's partitions; the first reads what the
    followed stage writes) over each partition reported with ``written``, in order."""

    def __init__(
        self,
        ctx: RunContext,
        stages: Sequence[PartitionStage],
        *,
        workers: int = 1,
        pool: ProcessPoolExecutor | None = None,
    ) -> None:
        self.ctx = ctx
        #: processes for the tasks, while the followed stage runs and after it (``drain``)
        self.workers = max(1, workers)
        self.lanes = [_Lane(s, s.task_fingerprint(ctx)) for s in stages]
        for stage in stages:
            prepare_dirs(stage, ctx)
        self.worker_ctx = ctx.for_worker(None)
        self.error: BaseException | None = None
        self.ran = 0
        #: what the worker loaded for each stage before its first task (``warm``)
        self.warmed: dict[str, str | None] = {}
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._todo: collections.deque[tuple[int, PartitionTask]] = collections.deque()
        self._running: set[Future] = set()
        self._stopping = False
        self._draining = False
        #: started with the first task, unless given (``start_workers``)
        self._pool: ProcessPoolExecutor | None = pool
        self._warm_asked = False
        self._thread = threading.Thread(target=self._loop, name="follower", daemon=True)
        self._thread.start()

    def warm_up(self) -> None:
        """The followed stage will write new partitions: start the worker now, and load what
        the stages load once while it writes the first (a core idles meanwhile). Once."""
        if not self._warm_asked:
            self._warm_asked = True
            self._events.put(("warm",))

    def written(self, path: Path) -> None:
        """The followed stage has written partition ``path`` (call in input order)."""
        self._events.put(("input", 0, path))

    def close(self, *, drain: bool = False) -> None:
        """Stop: drop the tasks not started (``drain``: run them first, ``workers`` at a
        time), wait for the running ones and record them."""
        self._events.put(("drain",) if drain else ("close",))
        self._thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        names = ", ".join(lane.stage.name for lane in self.lanes)
        loaded = "; ".join(f"{k}: {v}" for k, v in self.warmed.items() if v)
        if loaded:
            self.ctx.log(f"[{names}] worker loaded ahead of its first task: {loaded}")
        if self.ran:
            self.ctx.log(f"[{names}] {self.ran} partition(s) done while generating")
        if self.error is not None:  # the stages redo the task and report its error
            self.ctx.log(f"[{names}] stopped following: {self.error!r}".splitlines()[0])

    # The rest runs on the follower's thread only.

    def _loop(self) -> None:
        while True:
            event = self._events.get()
            try:
                if event[0] == "input":
                    self._input(event[1], event[2])
                elif event[0] == "done":
                    self._done(event[1], event[2], event[3])
                elif event[0] == "warm":
                    self._warm()
                elif event[0] == "warmed":
                    self._running.discard(event[1])
                    if not event[1].exception():  # else the first task loads it itself
                        for name, loaded in event[1].result().items():
                            if self.warmed.get(name) is None:
                                self.warmed[name] = loaded
                elif event[0] == "drain":
                    self._draining = True
                else:
                    self._stopping = True
                    self._todo.clear()
            except Exception as exc:  # the stage redoes the task and reports it itself
                self.error = exc
                self._stopping = True
                self._todo.clear()
            if not self._stopping:
                self._pump()
                if self._draining and not self._running and not self._todo:
                    return
            elif not self._running:
                return

    def _input(self, level: int, path: Path) -> None:
        if self._stopping:
            return
        lane = self.lanes[level]
        task = make_task(self.ctx, lane.fingerprint, lane.index, path, lane.first)
        lane.index += 1
        lane.first += task.batches
        record = finished(lane.stage, self.ctx, task)
        if record is not None:  # done by an earlier run
            self._pass_on(level, task, record)
        else:
            self._todo.append((level, task))

    def _start_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = _new_pool(self.workers)
        return self._pool

    def _warm(self) -> None:
        """Every worker's first task: warm the stages (each counts as a running task)."""
        if self._stopping:
            return
        lanes = [(lane.token, lane.stage) for lane in self.lanes]
        for _ in range(self.workers):
            future = self._start_pool().submit(_warm, lanes, self.worker_ctx)
            self._running.add(future)
            future.add_done_callback(lambda f: self._events.put(("warmed", f)))

    def _pump(self) -> None:
        # The pool starts its processes as tasks need them, up to ``workers``.
        while len(self._running) < self.workers and self._todo:
            level, task = self._todo.popleft()
            lane = self.lanes[level]
            pool = self._start_pool()
            future = pool.submit(_run, lane.token, lane.stage, self.worker_ctx, task)
            self._running.add(future)
            future.add_done_callback(
                lambda f, level=level, task=task: self._events.put(("done", level, task, f))
            )

    def _done(self, level: int, task: PartitionTask, future: Future) -> None:
        self._running.discard(future)
        result = future.result()  # a task's error stops the follower (see _loop)
        record = record_task(self.lanes[level].stage, self.ctx, task, result)
        self.ran += 1
        fault_point("follow.done")
        self._pass_on(level, task, record)

    def _pass_on(self, level: int, task: PartitionTask, record: dict[str, Any]) -> None:
        """Hand the outputs of the lane's finished tasks, in input order, to the next lane."""
        if level + 1 >= len(self.lanes):
            return
        lane, after = self.lanes[level], self.lanes[level + 1]
        lane.records[task.index] = record
        assert after.stage.follows is not None
        sink = after.stage.follows[1]
        while lane.passed in lane.records:
            done = lane.records.pop(lane.passed)
            lane.passed += 1
            for name in (done.get("outputs") or {}).get(sink, []):
                self._input(level + 1, lane.stage.sink_dir(self.ctx, sink) / name)


def followers(stages: Sequence[Stage], i: int, ctx: RunContext) -> list[PartitionStage]:
    """The partitioned stages right after ``stages[i]`` that can follow it (a stage that
    ``emits_partitions``): each reads the
    partitions of the one before, runs without the model for this config and may run on a
    worker process. Empty when ``[run] follow`` is off, ``[run] workers`` is 1 or the
    executor cannot (Ray maps tasks on its own cluster)."""
    from builder.stages.base import PartitionStage

    if not stages[i].emits_partitions or not ctx.config.run.follow:
        return []
    runner = ctx.runner()
    # ``[run] workers = 1`` keeps partitioned stages in the build's own process
    if not getattr(runner, "can_follow", False) or runner.workers() < 2:
        return []
    chain: list[PartitionStage] = []
    before = stages[i].name
    for stage in stages[i + 1 :]:
        if not isinstance(stage, PartitionStage) or stage.follows is None:
            break
        if stage.follows[0] != before or stage.needs_llm(ctx) or stage.local_only(ctx):
            break
        chain.append(stage)
        before = stage.name
    return chain


def early_workers(
    stages: Sequence[Stage], ctx: RunContext
) -> tuple[int, ProcessPoolExecutor] | None:
    """``(i, pool)``: the workers of the follower of ``stages[i]``, started now
    (``start_workers``), when stages run before it and it has written nothing yet (a new
    run: those stages will run too, and so will it). None otherwise: a rerun may find
    everything up to date, and would start processes for nothing."""
    for i, stage in enumerate(stages):
        chain = followers(stages, i, ctx)
        if not chain:
            continue
        if i == 0 or any(path.exists() for path in stage.outputs(ctx)):
            return None
        return i, start_workers(chain, ctx.config, ctx.runner().workers())
    return None


@contextlib.contextmanager
def following(
    ctx: RunContext,
    stages: Sequence[PartitionStage],
    *,
    drain: bool = False,
    pool: ProcessPoolExecutor | None = None,
) -> Iterator[None]:
    """While the block runs, ``ctx.partition_written`` feeds a ``Follower`` of ``stages``
    (nothing to follow: the block runs alone). ``drain``: when the block succeeds, finish
    every task reported, on the executor's worker count of processes, instead of leaving
    the ones not started to the stages: the follower's processes have the stages loaded,
    and a partition's quality task starts as soon as its filter task is done rather than
    after every filter task. A block that fails (an error, Ctrl-C, the budget) drops them.
    ``pool``: the workers ``start_workers`` started for these stages (shut down with the
    follower)."""
    if not stages:
        yield
        return
    follower = Follower(ctx, stages, workers=ctx.runner().workers(), pool=pool)
    ctx.on_partition, ctx.on_work_ahead = follower.written, follower.warm_up
    try:
        yield
    except BaseException:
        ctx.on_partition = ctx.on_work_ahead = None
        follower.close()
        raise
    ctx.on_partition = ctx.on_work_ahead = None
    try:
        follower.close(drain=drain)
    except BaseException:  # Ctrl-C while draining: stop after the running tasks
        follower.close()
        raise
