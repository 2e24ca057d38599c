"""The local executor's worker processes: a partitioned stage's tasks on every core.

``map_tasks`` runs ``run_task`` for each task on a pool of spawned processes (never forked:
the driver has threads) and yields each task with its result as it finishes, as the Ray
executor does. A task gets the config and the run directory; when the stage may call the
model (``PartitionStage.needs_llm``: second samples, the judge), ``ctx.llm()`` is a
``QueueLLM`` whose requests the driver answers with its own engine between task
completions, so the engine, its cache, the meter and ``--max-cost`` stay in one place, as
with the Ray executor's broker. Each worker keeps the first copy of a stage it receives for
the rest of the stage, so what the stage loads once (an embedding model, the walked units)
is loaded once per worker, not once per partition.

Workers (and the queues' server process) ignore SIGINT (Ctrl-C stops the driver, which
stops the pool after the running tasks) and die with the driver (``PR_SET_PDEATHSIG``), so a
``kill -9`` of the build leaves no process behind; a task killed mid-write leaves only a
temp file, which the next run removes (``builder.run.partitioned``).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import queue
import signal
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing.managers import SyncManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from builder.llm.base import ChatRequest, ChatResult
    from builder.run.partitioned import PartitionTask
    from builder.stages.base import PartitionStage, RunContext

#: How often the driver looks for model calls from the workers while tasks run (seconds).
SERVE_INTERVAL_S = 0.02

#: The stage copies a worker keeps, by the token of the stage run they belong to.
_STAGES: dict[str, Any] = {}


def die_with_parent(parent: int | None = None) -> None:
    """Worker initializer: ignore Ctrl-C, and get SIGKILL when the driver dies (Linux).

    With ``parent`` (the driver's pid), a worker whose driver died before the signal could
    be armed (a ``kill -9`` while the worker was still starting) exits at once: it would
    otherwise wait forever on a task queue it holds both ends of.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pool's own EOF handling remains
        pass
    if parent is not None and os.getppid() != parent:
        os._exit(0)


def _run(token: str, stage: PartitionStage, ctx: RunContext, task: PartitionTask) -> Any:
    from builder.run.partitioned import run_task

    if token not in _STAGES:
        _STAGES.clear()  # a new stage run: drop the last one's copy and what it loaded
        _STAGES[token] = stage
    # the worker's pid goes into the task's record (``_partitions/*.json``): who ran it
    return {**run_task(_STAGES[token], ctx, task), "worker": os.getpid()}


class QueueLLM:
    """What ``ctx.llm()`` (``endpoint`` "llm") or ``ctx.judge_llm()`` ("judge") is in a
    worker: the driver's engine for that endpoint, reached over queues (``run`` and
    ``complete`` as ``builder.llm.base.LLM``). The driver answers between task completions,
    so one concurrency window, cache, meter and ``--max-cost`` serve every worker."""

    def __init__(self, requests: Any, replies: Any, model_name: str, endpoint: str = "llm"):
        self.requests = requests
        self.replies = replies
        self.model_name = model_name
        self.endpoint = endpoint

    def run(self, requests: Iterable[ChatRequest], **_: Any) -> Iterator[ChatResult]:
        batch = list(requests)
        if not batch:
            return
        self.requests.put((self.replies, self.endpoint, batch))
        ok, payload = self.replies.get()
        if not ok:
            raise payload
        yield from payload

    def complete(self, request: ChatRequest) -> ChatResult:
        return next(iter(self.run([request])))


def _serve(ctx: RunContext, broker: Any) -> None:
    """Answer every model call the workers have queued, with the driver's engines."""
    while True:
        try:
            replies, endpoint, batch = broker.get_nowait()
        except queue.Empty:
            return
        try:
            results = list(ctx.endpoint_llm(endpoint).run(batch))
        except BaseException as exc:
            replies.put((False, exc))
            raise
        replies.put((True, results))


def map_tasks(
    stage: PartitionStage, ctx: RunContext, tasks: list[PartitionTask], workers: int
) -> Iterator[tuple[PartitionTask, dict[str, Any]]]:
    """Run ``tasks`` of ``stage`` on ``workers`` processes; yield ``(task, result)`` as each
    finishes. At most two tasks per worker are queued; a task's exception is raised here.
    A stage that may call the model (``needs_llm``) gets it through queues served here."""
    mp = multiprocessing.get_context("spawn")
    with contextlib.ExitStack() as stack:
        manager = None
        if stage.needs_llm(ctx):
            # the queues' server process dies with the build too (it holds its pipes)
            manager = SyncManager(ctx=mp)
            manager.start(initializer=die_with_parent, initargs=(os.getpid(),))
            stack.callback(manager.shutdown)
        broker = manager.Queue() if manager is not None else None
        pool = stack.enter_context(
            ProcessPoolExecutor(
                max_workers=workers,
                mp_context=mp,
                initializer=die_with_parent,
                initargs=(os.getpid(),),
            )
        )
        token = uuid.uuid4().hex
        pending = list(reversed(tasks))
        running: dict[Future, tuple[PartitionTask, Any]] = {}
        try:
            while pending or running:
                while pending and len(running) < 2 * workers:
                    task = pending.pop()
                    replies = client = None
                    if manager is not None:  # one reply queue per task
                        replies = manager.Queue()
                        client = functools.partial(QueueLLM, broker, replies)
                    remote = ctx.for_worker(client)
                    future = pool.submit(_run, token, stage, remote, task)
                    running[future] = (task, replies)
                # With a broker, wake up now and then to answer the workers' model calls.
                timeout = SERVE_INTERVAL_S if broker is not None else None
                done, _ = wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
                if broker is not None:
                    _serve(ctx, broker)
                for future in sorted(done, key=lambda f: running[f][0].index):
                    task, _ = running.pop(future)
                    yield task, future.result()
        finally:
            for future, (_, replies) in running.items():
                future.cancel()
                if replies is not None:  # a worker waiting for an answer gives up
                    replies.put((False, RuntimeError("the build stopped")))
