"""A bounded process-pool map shared by the CPU-heavy stages (dedup signatures, decontam)."""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def process_map(
    fn: Callable[[T], R],
    tasks: Iterable[T],
    workers: int,
    *,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    in_flight_per_worker: int = 2,
) -> Iterator[R]:
    """Run ``fn`` over ``tasks`` in ``workers`` spawned processes, yielding results as they
    complete (callers reorder by a task index when order matters).

    Only ``workers * in_flight_per_worker`` tasks are submitted at a time, so tasks that carry
    in-memory data are not all pickled at once. ``spawn`` (not fork) because the parent may
    hold threads (Polars, the engine's I/O loop) that a forked child would inherit broken.
    """
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=initializer, initargs=initargs
    )
    try:
        queue = deque(tasks)
        pending: set[Future[R]] = set()
        while queue or pending:
            while queue and len(pending) < workers * in_flight_per_worker:
                pending.add(pool.submit(fn, queue.popleft()))
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
