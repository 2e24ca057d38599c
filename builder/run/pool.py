"""The local executor's worker processes: a partitioned stage's tasks on every core.

``map_tasks`` runs ``run_task`` for each task on a pool of spawned processes (never forked:
the driver has threads) and yields each task with its result as it finishes, as the Ray
executor does. A task gets the config and the run directory only (``RunContext`` without
an engine): the executor sends a stage here only when it needs no model for this config
(``PartitionStage.needs_llm``). Each worker keeps the first copy of a stage it receives for
the rest of the stage, so what the stage loads once (an embedding model, the walked units)
is loaded once per worker, not once per partition.

Workers ignore SIGINT (Ctrl-C stops the driver, which stops the pool after the running
tasks) and die with the driver (``PR_SET_PDEATHSIG``), so a ``kill -9`` of the build leaves
no process behind; a task killed mid-write leaves only a temp file, which the next run
removes (``builder.run.partitioned``).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from builder.run.partitioned import PartitionTask
    from builder.stages.base import PartitionStage, RunContext

#: The stage copies a worker keeps, by the token of the stage run they belong to.
_STAGES: dict[str, Any] = {}


def _die_with_parent() -> None:
    """Worker initializer: ignore Ctrl-C, and get SIGKILL when the driver dies (Linux)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pool's own EOF handling remains
        pass


def _run(token: str, stage: PartitionStage, ctx: RunContext, task: PartitionTask) -> Any:
    from builder.run.partitioned import run_task

    if token not in _STAGES:
        _STAGES.clear()  # a new stage run: drop the last one's copy and what it loaded
        _STAGES[token] = stage
    # the worker's pid goes into the task's record (``_records/*.json``): who ran it
    return {**run_task(_STAGES[token], ctx, task), "worker": os.getpid()}


def map_tasks(
    stage: PartitionStage, ctx: RunContext, tasks: list[PartitionTask], workers: int
) -> Iterator[tuple[PartitionTask, dict[str, Any]]]:
    """Run ``tasks`` of ``stage`` on ``workers`` processes; yield ``(task, result)`` as each
    finishes. At most two tasks per worker are queued; a task's exception is raised here."""
    from builder.stages.base import RunContext

    remote = RunContext(config=ctx.config, paths=ctx.paths)
    token = uuid.uuid4().hex
    pending = list(reversed(tasks))
    running: dict[Future, PartitionTask] = {}
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_die_with_parent,
    ) as pool:
        try:
            while pending or running:
                while pending and len(running) < 2 * workers:
                    task = pending.pop()
                    running[pool.submit(_run, token, stage, remote, task)] = task
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: running[f].index):
                    yield running.pop(future), future.result()
        finally:
            for future in running:
                future.cancel()
