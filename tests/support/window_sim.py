"""A discrete-event simulation of an endpoint and the engine's window controller, on a
simulated clock: deterministic (seeded), instant, and free of the event loop.

    sim = Simulation(WindowController(256), Endpoint(latency=1.0, limit=64), n=1000)
    sim.run()
    sim.refused, sim.finish_time, sim.controller.window
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from builder.llm.window import OK, REFUSED, RateLimitInfo, RatePacer, WindowController


class _Bucket:
    """A per-minute limit as the endpoint enforces it (as OpenAI does): a bucket of one
    second's worth, refilled continuously."""

    def __init__(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.level = self.rate
        self.t = 0.0

    def refill(self, t: float) -> None:
        self.level = min(self.rate, self.level + (t - self.t) * self.rate)
        self.t = t

    def remaining_after(self, amount: float) -> float:
        return max(0.0, self.level - amount)

    def reset_s(self, amount: float) -> float:
        """Seconds until the bucket is full again once ``amount`` is taken."""
        return (self.rate - self.remaining_after(amount)) / self.rate


@dataclass
class Endpoint:
    """What the simulated server does with a request arriving at ``t``."""

    latency: float = 1.0
    limit: int | None = None  # 429 (at once) above this many in flight
    sporadic: float = 0.0  # share of requests answered 429 at once, whatever the load
    burst: tuple[float, float] | None = None  # every request in [start, end) gets 429
    rpm: float | None = None  # requests per minute
    tpm: float | None = None  # tokens per minute
    send_headers: bool = False  # x-ratelimit-* on every answer (with rpm / tpm)
    # every request in [start, end) gets 429 with "nothing left until the reset" headers and
    # no limit to pace by: the endpoint's global pause
    pause: tuple[float, float] | None = None
    refuse_latency: float = 0.001
    retry_after: float = 1.0
    in_flight: int = 0
    served: int = 0
    refused: int = 0
    _requests: _Bucket | None = None
    _tokens: _Bucket | None = None

    def __post_init__(self) -> None:
        self._requests = _Bucket(self.rpm) if self.rpm else None
        self._tokens = _Bucket(self.tpm) if self.tpm else None

    def answer(
        self, t: float, rng: random.Random, tokens: float = 1.0
    ) -> tuple[str, float, RateLimitInfo | None]:
        """(outcome, seconds until the answer, headers) for a request of ``tokens`` tokens."""
        if self.pause is not None and self.pause[0] <= t < self.pause[1]:
            self.refused += 1
            info = RateLimitInfo(remaining_requests=0, reset_requests_s=self.pause[1] - t)
            return REFUSED, self.refuse_latency, info
        req, tok = self._requests, self._tokens
        for bucket in (req, tok):
            if bucket is not None:
                bucket.refill(t)
        headers = None
        if self.send_headers and (req is not None or tok is not None):
            headers = RateLimitInfo(
                req.per_minute if req else None,
                req.remaining_after(1.0) if req else None,
                req.reset_s(1.0) if req else None,
                tok.per_minute if tok else None,
                tok.remaining_after(tokens) if tok else None,
                tok.reset_s(tokens) if tok else None,
            )
        if (req is not None and req.level < 1.0) or (tok is not None and tok.level < tokens):
            self.refused += 1
            return REFUSED, self.refuse_latency, headers
        if req is not None:
            req.level -= 1.0
        if tok is not None:
            tok.level -= tokens
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
    """``n`` requests of ``tokens`` tokens each through ``controller`` (and ``pacer``) against
    ``endpoint``; a refused request is retried after Retry-After plus up to 10% jitter, like
    the engine. Rate-limit headers reach the pacer with the answer that carries them.

    ``loop_lag`` models a busy machine: the engine's event loop runs only every ``loop_lag``
    seconds, so it reads answers, closes rounds and launches late, in bursts."""

    def __init__(
        self,
        controller: WindowController,
        endpoint: Endpoint,
        n: int,
        *,
        pacer: RatePacer | None = None,
        tokens: float = 1.0,
        loop_lag: float = 0.0,
        seed: int = 0,
        on_round: Callable[[float, WindowController], None] | None = None,
    ) -> None:
        self.c = controller
        self.ep = endpoint
        self.n = n
        self.pacer = pacer
        self.tokens = tokens
        self.loop_lag = loop_lag
        self.rng = random.Random(seed)
        self.now = 0.0
        self.queue: list[int] = list(range(n))
        self.done = 0
        self.refused = 0
        self.refused_at: list[float] = []  # when each 429 was sent
        self.attempts = 0
        self.windows: list[tuple[float, int]] = []
        self.max_window = 0
        self._events: list[tuple[float, int, str, int, float, int]] = []
        self._seq = 0
        self._headers: dict[int, RateLimitInfo] = {}  # event seq -> headers of that answer
        self._wake_at: float | None = None

    def _push(
        self,
        t: float,
        kind: str,
        job: int = -1,
        extra: float = 0.0,
        ticket: int = -1,
        headers: RateLimitInfo | None = None,
    ) -> None:
        self._seq += 1
        if headers is not None:
            self._headers[self._seq] = headers
        heapq.heappush(self._events, (self._late(t), self._seq, kind, job, extra, ticket))

    def _launch_all(self) -> None:
        while self.queue and self.c.can_launch():
            if self.pacer is not None:
                d = self.pacer.delay(self.now, self.tokens)
                if d > 0:
                    if self._wake_at is None or self._wake_at > self.now + d:
                        self._wake_at = self.now + d
                        self._push(self.now + d, "wake")
                    return
                self.pacer.take(self.now, self.tokens)
            job = self.queue.pop(0)
            ticket = self.c.on_launch(self.now)
            self.attempts += 1
            outcome, after, headers = self.ep.answer(self.now, self.rng, self.tokens)
            if outcome == REFUSED:
                self.refused_at.append(self.now)
            self._push(self.now + after, outcome, job, after, ticket, headers)

    def _late(self, t: float) -> float:
        """When the event loop gets to something due at ``t``."""
        if not self.loop_lag:
            return t
        late = math.ceil(t / self.loop_lag) * self.loop_lag
        return late if late >= t else late + self.loop_lag  # never early (rounding)

    def run(self, until: float = 10_000.0) -> Simulation:
        self._launch_all()
        while self.done < self.n and self.now < until:
            deadline = self._late(self.c.next_deadline())
            if self._events and self._events[0][0] <= deadline:
                t, seq, kind, job, extra, ticket = heapq.heappop(self._events)
                headers = self._headers.pop(seq, None)
                if headers is not None and self.pacer is not None:
                    self.pacer.observe(max(self.now, t), headers)
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
