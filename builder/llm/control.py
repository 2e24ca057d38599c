"""Flow control for the engine's event loop: each endpoint's limiter (the concurrency window
of ``builder.llm.window`` plus rate-limit pacing), a job queue with delayed (retry) entries,
and jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from builder.llm.window import ERROR, OK, REFUSED, RateLimitInfo, RatePacer, WindowController


class EndpointLimiter:
    """One endpoint's slots on an event loop: ``acquire`` waits for room in the window,
    ``launch`` marks the request as sent (after ``pace`` waited for the rate limits),
    ``release`` reports how it went. Not bound to an event loop, so one limiter keeps what it
    learnt across runs; only one loop may use it at a time.
    """

    def __init__(
        self,
        max_limit: int,
        min_limit: int = 1,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        now = clock()
        self.controller = WindowController(max_limit, min_limit, now=now)
        self.pacer = RatePacer(requests_per_minute, tokens_per_minute, now=now)
        self.held = 0  # slots held by workers (waiting to send, pacing or in flight)
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet."""
        return self.controller.in_flight

    @property
    def window(self) -> int:
        return self.controller.window

    def _room(self) -> bool:
        c = self.controller
        return self.held + c.parked < c.window

    async def acquire(self) -> None:
        """Wait for a slot in the window."""
        self.controller.tick(self.clock())
        if self._room() and not self._waiters:
            self.held += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._arm()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.held -= 1  # the slot was handed to us just as we were cancelled
                self._wake()
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    async def pace(self, tokens: float = 0.0) -> None:
        """Wait until the rate limits (settings or ``x-ratelimit-*`` headers) allow one more
        request of about ``tokens`` tokens, and count it."""
        if not self.pacer.active:
            return
        while True:
            now = self.clock()
            delay = self.pacer.delay(now, tokens)
            if delay <= 0:
                self.pacer.take(now, tokens)
                return
            self.pacer.paused_s += delay
            await asyncio.sleep(delay)

    def launch(self) -> int:
        """The request goes out now; returns the ticket for ``release``."""
        return self.controller.on_launch(self.clock())

    def release(
        self,
        ticket: int | None,
        outcome: str = OK,
        latency_s: float = 0.0,
        ratelimit: RateLimitInfo | None = None,
    ) -> None:
        """Give the slot back; ``ticket`` None: nothing was sent with it."""
        now = self.clock()
        self.held -= 1
        if ticket is not None:
            self.controller.on_result(now, outcome, latency_s, ticket)
        if ratelimit is not None:
            self.pacer.observe(now, ratelimit)
        self._wake()

    def _wake(self) -> None:
        self.controller.tick(self.clock())
        while self._waiters and self._room():
            fut = self._waiters.popleft()
            if not fut.done():
                self.held += 1
                fut.set_result(None)
        if self._waiters:
            self._arm()

    def _arm(self) -> None:
        """Wake waiters when the window may next open (ramp step or end of a round)."""
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, self.controller.next_deadline() - self.clock())
        self._timer = asyncio.get_running_loop().call_later(delay + 1e-3, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._wake()

    def snapshot(self) -> dict[str, Any]:
        snap = self.controller.snapshot(self.clock())
        if self.pacer.reason:
            snap["pacing"] = self.pacer.reason
        return snap


def outcome_of(status: int | None, answered: bool) -> str:
    """What an attempt tells the window: ``OK`` (the endpoint answered: a reply, or an HTTP
    error other than 429), ``REFUSED`` (429) or ``ERROR`` (no answer)."""
    if status == 429:
        return REFUSED
    if answered or status is not None:
        return OK
    return ERROR


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
