"""Flow control for the engine's event loop: an AIMD concurrency limiter, a job queue with
delayed (retry) entries, and jittered exponential backoff.

AIMD (additive increase, multiplicative decrease, as in TCP congestion control): each
endpoint starts at its configured concurrency; a 429 halves the limit (at most once per
"generation" of requests, so a burst of 429s from requests launched together counts once),
and every success adds ``1/limit``, i.e. about +1 per round of requests, back up to the
configured cap. The limit never drops below ``min_concurrency``.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from typing import Any


class AIMDLimiter:
    """Counts requests in flight against a limit that adapts to overload signals.

    Not bound to an event loop, so one limiter keeps its learned limit across runs; only one
    loop may use it at a time.
    """

    def __init__(self, max_limit: int, min_limit: int = 1) -> None:
        self.max_limit = max(1, max_limit)
        self.min_limit = max(1, min(min_limit, self.max_limit))
        self.limit = float(self.max_limit)
        self.in_flight = 0
        self.generation = 0  # bumped by each decrease
        self.decreases = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def current(self) -> int:
        return max(self.min_limit, int(self.limit))

    async def acquire(self) -> int:
        """Wait for a slot; returns the generation to pass to ``on_overload``."""
        if self.in_flight < self.current and not self._waiters:
            self.in_flight += 1
            return self.generation
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed to us just as we were cancelled
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise
        return self.generation

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.current:
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)

    def on_success(self) -> None:
        if self.limit < self.max_limit:
            self.limit = min(float(self.max_limit), self.limit + 1.0 / self.limit)
            self._wake()

    def on_overload(self, generation: int) -> None:
        """A 429 for a request launched in ``generation``: halve the limit once per generation."""
        if generation != self.generation:
            return
        self.limit = max(float(self.min_limit), self.limit / 2.0)
        self.generation += 1
        self.decreases += 1


class JobQueue:
    """FIFO of jobs for worker tasks; retries go in front after a delay."""

    def __init__(self) -> None:
        self._ready: deque[Any] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._timers: set[asyncio.TimerHandle] = set()

    def __len__(self) -> int:
        return len(self._ready)

    @property
    def delayed(self) -> int:
        return len(self._timers)

    def put(self, job: Any, *, front: bool = False) -> None:
        if front:
            self._ready.appendleft(job)
        else:
            self._ready.append(job)
        while self._getters:
            fut = self._getters.popleft()
            if not fut.done():
                fut.set_result(None)
                break

    def put_later(self, job: Any, delay: float) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            self.put(job, front=True)

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    async def get(self) -> Any:
        while not self._ready:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and self._ready:
                    # we were woken for an item: pass the wake-up on
                    self.put(self._ready.popleft(), front=True)
                raise
        return self._ready.popleft()

    def clear(self) -> list[Any]:
        """Drop every queued and delayed job (cancelling the timers); returns the ready ones."""
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        jobs = list(self._ready)
        self._ready.clear()
        return jobs


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number ``attempt`` (1-based): "equal jitter" exponential backoff,
    at least ``retry_after`` when the server said so (plus up to 10% jitter, so clients told
    the same Retry-After don't come back in lockstep)."""
    ceiling = min(cap, base * (2 ** (attempt - 1)))
    delay = ceiling / 2 + rand() * ceiling / 2
    if retry_after is not None:
        delay = max(delay, retry_after * (1.0 + 0.1 * rand()))
    return delay
