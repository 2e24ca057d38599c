"""Where dedup's tasks run: in this process, in a pool of worker processes, or elsewhere.

The pool is started before the input is even looked at (its workers import while the
parent plans the pieces) and serves both phases, signatures then buckets, so each worker
starts once. An executor's ``task_map`` (Ray) replaces it entirely.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from builder.dedup.signatures import init_worker


def _ready() -> None:
    """A no-op task: submitting one per worker makes the pool spawn them all now."""


class WorkerPool:
    """``map(fn, items)`` yielding results as they finish; ``workers <= 1``: in-process.

    At most two tasks per worker are queued at a time, so tasks carrying data are not all
    pickled at once. ``spawn`` (not fork): the parent may hold threads (Polars) that a
    forked child would inherit broken.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._pool: ProcessPoolExecutor | None = None
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
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        finally:
            for fut in pending:
                fut.cancel()

    def close(self, *, wait: bool = True) -> None:
        """Stop the workers (``wait=False``: let them exit while this process goes on)."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            if wait:
                self._pool = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
