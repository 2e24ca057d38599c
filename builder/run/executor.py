"""Executors: run a list of stages over a run directory.

``LocalExecutor`` runs them in order in this process, skipping a stage whose marker holds
the fingerprint it would have now and whose outputs exist. It is the one place that knows
about markers: a stage's marker is cleared before it runs and written after its outputs are
in place, with its counters. A stage that always runs (fingerprint ``None``) is marked with
a digest of its output files, so the stages after it see whether anything changed.

Two maps: ``map_partitions`` runs a partitioned stage's tasks (one input partition each);
``map_tasks`` runs a stage's own task list (decontam's scan, assemble's token counts), on
worker processes or in this process. ``RayExecutor`` runs both as Ray tasks.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.errors import InputError
from builder.records import sha256_hex
from builder.run.partitioned import run_task
from builder.util.faults import fault_point
from builder.util.files import file_sha256
from builder.util.memory import release_memory

if TYPE_CHECKING:  # pragma: no cover
    from builder.config import CorpusConfig
    from builder.run.partitioned import PartitionTask
    from builder.stages.base import PartitionStage, RunContext, Stage


def digest_files(paths: list[Path]) -> str:
    """A fingerprint of output files: their names and contents."""
    return sha256_hex([[p.name, file_sha256(p)] for p in paths])


def _files(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        if p.is_dir():
            out.extend(
                sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            )
        elif p.exists():
            out.append(p)
    return out


#: ``map_tasks``' report of where each task ran: ``where(pid, Ray node id or None)``.
Where = Callable[[int, "str | None"], None]


@dataclass
class TaskLog:
    """Where an executor ran a stage's tasks (``map_tasks(fn, items, where=log.add)``): the
    processes and, on Ray, the nodes. Kept in the stage's counters (its marker), never in the
    manifest, which must not depend on the executor."""

    pids: list[int] = field(default_factory=list)
    nodes: list[str | None] = field(default_factory=list)

    def add(self, pid: int, node: str | None) -> None:
        self.pids.append(pid)
        self.nodes.append(node)

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": len(self.pids),
            "workers": sorted(set(self.pids)),
            "nodes": sorted({n for n in self.nodes if n is not None}),
        }


def _traced(fn: Callable[[Any], Any], item: Any) -> tuple[int, None, Any]:
    """``fn(item)`` in a local worker process, with the pid of the process that ran it."""
    return os.getpid(), None, fn(item)


class LocalExecutor:
    """Run stages one after another in this process (see the module docstring)."""

    name = "local"
    #: How algorithms with their own task lists and their own process pool (dedup, which
    #: sizes it from ``[dedup] workers``) map them elsewhere: ``fn, tasks -> results as
    #: they finish``; None here: their own pool.
    task_map: Any = None
    #: Whether partitioned stages may follow the stage before them on a local worker
    #: process while it runs (``builder.run.follow``).
    can_follow = True

    def __init__(self, config: CorpusConfig | None = None) -> None:
        self.config = config

    def workers(self) -> int:
        """Processes for partitioned stages: ``[run] workers``, 0 meaning one per CPU."""
        wanted = self.config.run.workers if self.config is not None else 1
        return wanted or min(os.cpu_count() or 1, MAX_AUTO_WORKERS)

    def map_partitions(
        self, stage: PartitionStage, ctx: RunContext, tasks: Iterable[PartitionTask]
    ) -> Iterator[tuple[PartitionTask, dict[str, Any]]]:
        """Run a partitioned stage's tasks (one input partition each) and yield each with
        its result as it finishes: on a pool of worker processes when there are several
        tasks and the stage allows it (``local_only``; the workers' model calls come back
        here: ``builder.run.pool``), else one after another in this process."""
        todo = list(tasks)
        workers = min(self.workers(), len(todo))
        if workers < 2 or stage.local_only(ctx):
            for task in todo:
                yield task, run_task(stage, ctx, task)
            return
        from builder.run.pool import map_tasks

        # A pool per stage: its workers' memory (models, allocator pools) goes with it.
        yield from map_tasks(stage, ctx, todo, workers)

    def map_tasks(
        self, fn: Callable[[Any], Any], items: Iterable[Any], *, where: Where | None = None
    ) -> Iterator[Any]:
        """Run ``fn`` (a module-level function) over ``items`` and yield the results as
        they finish: on ``workers()`` spawned processes when there are several items (a pool
        for this call; its workers die with the build), else one after another in this
        process. ``where(pid, None)`` is told who ran each item. The stages' own task lists
        (decontam's n-gram scan, assemble's token counts) go through here, and through
        ``RayExecutor.map_tasks`` as Ray tasks; a task reads and writes only what its item
        names, so the results are the same wherever it runs."""
        todo = list(items)
        workers = min(self.workers(), len(todo))
        if workers < 2:
            for item in todo:
                result = fn(item)
                if where is not None:
                    where(os.getpid(), None)
                yield result
            return
        from builder.parallel import process_map
        from builder.run.pool import die_with_parent

        call = functools.partial(_traced, fn)
        for pid, node, result in process_map(
            call, todo, workers, initializer=die_with_parent, initargs=(os.getpid(),)
        ):
            if where is not None:
                where(pid, node)
            yield result

    def close(self) -> None:
        """Release what the executor holds (nothing for the local one)."""

    def run_stage(self, stage: Stage, ctx: RunContext) -> dict[str, Any]:
        """Run one stage unless it is up to date; return its counters."""
        markers = ctx.markers
        with ctx.timed(stage.name):
            fingerprint = stage.fingerprint(ctx)
            outputs = stage.outputs(ctx)
            if fingerprint is not None and markers.done(stage.name, fingerprint, outputs):
                ctx.log(f"[{stage.name}] up to date")
                counters = markers.read(stage.name).get("counters") or {}
                ctx.counters[stage.name] = counters
                return counters
            missing = [p for p in stage.inputs(ctx) if not p.exists()]
            if missing:
                raise InputError(
                    f"stage {stage.name} needs {missing[0]}, which does not exist",
                    hint="run the stages before it first (`corpus build` runs them all)",
                )
            markers.clear(stage.name)
            counters = stage.run(ctx)
            if fingerprint is None:
                fingerprint = digest_files(_files(stage.outputs(ctx)))
            else:
                ctx.did_work = True
            markers.mark(stage.name, fingerprint, counters=counters)
            fault_point("stage.marked")
            fault_point(f"stage.marked.{stage.name}")  # one stage's marker, by name
            release_memory()  # the next stage starts from a low RSS, not this one's peak
            ctx.counters[stage.name] = counters
            return counters

    def run(self, stages: Sequence[Stage], ctx: RunContext) -> None:
        """Run ``stages`` in order over ``ctx``'s run directory."""
        for stage in stages:
            self.run_stage(stage, ctx)


#: ``[run] workers = 0`` starts one worker per CPU, at most this many.
MAX_AUTO_WORKERS = 4

#: Executors by name (``--executor``); a Ray executor registers itself here.
EXECUTORS: dict[str, type[LocalExecutor]] = {"local": LocalExecutor}

#: Executors whose module is imported only when chosen (so a local build never imports Ray).
LAZY_EXECUTORS: dict[str, str] = {"ray": "builder.run.ray_executor"}


def make_executor(name: str, config: CorpusConfig) -> LocalExecutor:
    """The executor called ``name`` for ``config`` (``[run] executor``, ``--executor``)."""
    if name not in EXECUTORS and name in LAZY_EXECUTORS:
        importlib.import_module(LAZY_EXECUTORS[name])  # registers itself in EXECUTORS
    try:
        cls = EXECUTORS[name]
    except KeyError:
        raise InputError(
            f"unknown executor {name!r}",
            hint=f"use one of: {', '.join(sorted({*EXECUTORS, *LAZY_EXECUTORS}))}",
        ) from None
    return cls(config)
