"""A discrete-event simulation of an endpoint and the engine's window controller, on a
simulated clock: deterministic (seeded), instant, and free of the event loop.

    sim = Simulation(WindowController(256), Endpoint(latency=1.0, limit=64), n=1000)
    sim.run()
    sim.refused, sim.finish_time, sim.controller.window
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from builder.llm.window import OK, REFUSED, RateLimitInfo, RatePacer, WindowController


@dataclass
class Endpoint:
    """What the simulated server does with a request arriving at ``t``."""

    latency: float = 1.0
    limit: int | None = None  # 429 (at once) above this many in flight
    sporadic: float = 0.0  # share of requests answered 429 at once, whatever the load
    burst: tuple[float, float] | None = None  # every request in [start, end) gets 429
    rpm: float | None = None  # requests per minute (fixed one-second windows of rpm/60)
    send_headers: bool = False
    refuse_latency: float = 0.001
    retry_after: float = 1.0
    in_flight: int = 0
    served: int = 0
    refused: int = 0
    _window: dict[int, int] = field(default_factory=dict)

    def answer(self, t: float, rng: random.Random) -> tuple[str, float, RateLimitInfo | None]:
        """(outcome, seconds until the answer, headers)."""
        headers = None
        if self.rpm is not None:
            second = int(t)
            used = self._window.get(second, 0)
            per_s = self.rpm / 60
            if self.send_headers:
                headers = RateLimitInfo(
                    limit_requests=self.rpm,
                    remaining_requests=max(0, int(per_s) - used - 1),
                    reset_requests_s=1.0 - (t - second),
                )
            if used >= per_s:
                self.refused += 1
                return REFUSED, self.refuse_latency, headers
            self._window[second] = used + 1
        if self.burst is not None and self.burst[0] <= t < self.burst[1]:
            self.refused += 1
            return REFUSED, self.refuse_latency, headers
        if self.limit is not None and self.in_flight >= self.limit:
            self.refused += 1
            return REFUSED, self.refuse_latency, headers
        if self.sporadic and rng.random() < self.sporadic:
            self.refused += 1
            return REFUSED, self.refuse_latency, headers
        self.in_flight += 1
        self.served += 1
        return OK, self.latency, headers


class Simulation:
    """``n`` requests through ``controller`` (and ``pacer``) against ``endpoint``; a refused
    request is retried after Retry-After plus up to 10% jitter, like the engine."""

    def __init__(
        self,
        controller: WindowController,
        endpoint: Endpoint,
        n: int,
        *,
        pacer: RatePacer | None = None,
        seed: int = 0,
        on_round: Callable[[float, WindowController], None] | None = None,
    ) -> None:
        self.c = controller
        self.ep = endpoint
        self.n = n
        self.pacer = pacer
        self.rng = random.Random(seed)
        self.now = 0.0
        self.queue: list[int] = list(range(n))
        self.done = 0
        self.refused = 0
        self.attempts = 0
        self.windows: list[tuple[float, int]] = []
        self.max_window = 0
        self._events: list[tuple[float, int, str, int, float, int]] = []
        self._seq = 0
        self._wake_at: float | None = None

    def _push(
        self, t: float, kind: str, job: int = -1, extra: float = 0.0, ticket: int = -1
    ) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, kind, job, extra, ticket))

    def _launch_all(self) -> None:
        while self.queue and self.c.can_launch():
            if self.pacer is not None:
                d = self.pacer.delay(self.now, 1.0)
                if d > 0:
                    if self._wake_at is None or self._wake_at > self.now + d:
                        self._wake_at = self.now + d
                        self._push(self.now + d, "wake")
                    return
                self.pacer.take(self.now, 1.0)
            job = self.queue.pop(0)
            ticket = self.c.on_launch(self.now)
            self.attempts += 1
            outcome, after, headers = self.ep.answer(self.now, self.rng)
            self._push(self.now + after, outcome, job, after, ticket)
            if headers is not None and self.pacer is not None:
                self.pacer.observe(self.now, headers)

    def run(self, until: float = 10_000.0) -> Simulation:
        self._launch_all()
        while self.done < self.n and self.now < until:
            deadline = self.c.next_deadline()
            if self._events and self._events[0][0] <= deadline:
                t, _, kind, job, extra, ticket = heapq.heappop(self._events)
            else:
                t, kind, job, extra, ticket = deadline, "tick", -1, 0.0, -1
            self.now = max(self.now, t)
            if kind == OK:
                self.ep.in_flight -= 1
                self.done += 1
                self.c.on_result(self.now, OK, extra, ticket)
            elif kind == REFUSED:
                self.refused += 1
                self.c.on_result(self.now, REFUSED, extra, ticket)
                delay = self.ep.retry_after * (1 + 0.1 * self.rng.random())
                self._push(self.now + delay, "retry", job)
            elif kind == "retry":
                self.queue.insert(0, job)
            elif kind == "wake":
                self._wake_at = None
            else:
                self.c.tick(self.now)
            w = self.c.window
            self.max_window = max(self.max_window, w)
            if not self.windows or self.windows[-1][1] != w:
                self.windows.append((self.now, w))
            self._launch_all()
        return self

    @property
    def finish_time(self) -> float:
        return self.now

    def window_at(self, t: float) -> int:
        w = self.windows[0][1]
        for when, value in self.windows:
            if when > t:
                break
            w = value
        return w
