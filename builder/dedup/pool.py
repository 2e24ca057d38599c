"""Where dedup's tasks run: in this process, in a pool of worker processes, or elsewhere.

The pool serves both phases, signatures then buckets, so each worker starts once. It can be
started before anything heavy is imported: this module needs only the standard library, so
``corpus dedup`` starts its workers first thing and they import numpy and Polars while the
parent imports its own modules and plans the pieces (``dedup_files(pool=...)``). An
executor's ``task_map`` (Ray) replaces it entirely.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any


def init_worker() -> None:
    """Set up a worker process we own: die with the parent, ignore Ctrl-C, keep memory.

    Freed memory stays inside the worker instead of going back to the kernel: each
    sub-batch allocates and frees arrays of MBs, and glibc would hand them back with munmap
    and fault them in again for the next one, which on virtual machines costs more than the
    arithmetic. ``PR_SET_PDEATHSIG``: a parent killed with SIGKILL takes its workers along,
    so no orphan keeps writing into the work directory. Never done in the caller's process.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX: serve large blocks from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: do not trim the heap eagerly
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _ready() -> None:
    """The first task of every worker: submitting one each makes the pool spawn them all
    now, and importing the signature tasks' module here (numpy, Polars: ~0.3 s) makes a
    worker ready before its first real task arrives."""
    import builder.dedup.signatures  # noqa: F401


class WorkerPool:
    """``map(fn, items)`` yielding results as they finish; ``workers <= 1``: in-process.

    At most two tasks per worker are queued at a time, so tasks carrying data are not all
    pickled at once. ``spawn`` (not fork): the parent may hold threads (Polars) that a
    forked child would inherit broken. ``submitted`` counts the tasks sent to the worker
    processes; ``closed`` tells whether ``close`` was called.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self.submitted = 0
        self.closed = False
        self._pool: ProcessPoolExecutor | None = None
        self._exiting: list[Any] = []
        if self.workers > 1:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker,
            )
            # One core's worth of work per worker: a Polars thread pool of every core in
            # each worker would only compete with the other workers. Polars sizes its pool
            # when imported, so the variable must be in the environment the workers start
            # with (they start here, one per submit).
            saved = os.environ.get("POLARS_MAX_THREADS")
            os.environ["POLARS_MAX_THREADS"] = "1"
            try:
                for _ in range(self.workers):
                    self._pool.submit(_ready)
            finally:
                if saved is None:
                    os.environ.pop("POLARS_MAX_THREADS", None)
                else:
                    os.environ["POLARS_MAX_THREADS"] = saved

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        queue = deque(items)
        if self._pool is None or len(queue) <= 1:
            for item in queue:
                yield fn(item)
            return
        pending: set[Future[Any]] = set()
        try:
            while queue or pending:
                while queue and len(pending) < 2 * self.workers:
                    pending.add(self._pool.submit(fn, queue.popleft()))
                    self.submitted += 1
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        finally:
            for fut in pending:
                fut.cancel()

    def close(self, *, wait: bool = True) -> None:
        """Stop the workers (``wait=False``: let them exit while this process goes on; a
        later ``close()`` waits for them: the executor itself forgets its processes once
        shut down, so they are kept here)."""
        self.closed = True
        if self._pool is not None:
            self._exiting.extend((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None
        if wait:
            for proc in self._exiting:
                proc.join()
            self._exiting = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
