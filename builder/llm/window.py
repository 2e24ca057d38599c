"""How many requests to keep in flight at one endpoint: a window that finds the endpoint's
limit and stays near it, on any clock (pure logic; ``control.EndpointLimiter`` runs it on an
event loop, tests run it on a simulated clock).

Why not plain AIMD (halve on every 429 of a new "generation", +1/limit per success): behind
proxies and shared gateways a few percent of replies are 429 whatever the load, so such a
window halves every round trip and never climbs back; and under a real limit each 429 frees
its slot at once, the next request takes it and is refused again, a storm of 429s
(bench/RESULTS.md, "Under 429s"). This controller:

- **Starts with a quick ramp** (``ramp``): from 16 (or the cap, if lower) the window grows by
  a quarter every ``ramp_step_s`` (20 ms, or later when the event loop is late); a step in
  which most new requests came back 429 at once, or a quarter of the ramp's requests refused,
  ends the ramp at the number of requests the endpoint accepted. Without that, a run would
  open with ``max_concurrency`` requests and a limit of 64 would refuse all the others.
- **Parks refused slots**: a slot whose request got 429 is not reused before the round ends,
  so an excess slot costs one 429 per round trip, not one per loopback turn.
- **Judges once per round trip** (``round``: one smoothed latency of successful requests): a
  round whose 429s exceed what the background rate explains (``R > E + 2 sqrt(E) + 0.5``
  with ``E = background x replies``) cuts the window once, to ``window - R``: the requests
  that were accepted together (a pause, where every request is refused: the floor).
- **Learns the background rate** of 429s that do not rise with load from the round right
  after a cut: if lowering the load did not lower the 429 share, those 429s are sporadic, and
  later rounds tolerate that share. A share above a quarter is never background.
- **Refills quickly**: below the window of the last cut it closes half the gap per round
  (binary search; after a pause in which every request was refused, toward the window before
  the pause); above it, it probes with a step that doubles after each clean round
  (1, 1, 2, 4, ... up to a quarter of the window), up to ``max_concurrency``. The window never
  goes below ``floor`` (``min_concurrency``), which keeps probing.

Rate limits (``RatePacer``): ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``
headers (OpenAI and many gateways) and ``[llm] max_requests_per_minute`` /
``max_tokens_per_minute`` feed token buckets (one second's worth, refilled at 97% of the
limit) that delay launches before a 429 happens; an endpoint that says ``remaining = 0``
without a limit to pace by pauses every launch until its reset. Retry-After, by contrast,
delays only the request that got it (``control.backoff_delay``, with jitter).
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OK, REFUSED, ERROR = "ok", "429", "error"


@dataclass
class Round:
    """What happened during one round trip."""

    ok: int = 0
    refused: int = 0  # 429 answers
    errors: int = 0  # other failed attempts (5xx, resets, timeouts): no load signal
    launched: int = 0
    peak: int = 0  # most requests in flight (and parked) at once


class WindowController:
    """The concurrency window of one endpoint (see the module docstring). Every method takes
    ``now`` (seconds, any monotonic clock) so that a simulated clock drives it exactly."""

    RAMP_START = 16
    RAMP_FACTOR = 1.25
    BG_MAX = 0.25  # a 429 share above this is never "background"

    def __init__(
        self,
        cap: int,
        floor: int = 1,
        *,
        now: float = 0.0,
        ramp_step_s: float = 0.02,
        default_rtt_s: float = 1.0,
        min_round_s: float = 0.05,
    ) -> None:
        self.cap = max(1, cap)
        self.floor = max(1, min(floor, self.cap))
        self.ramp_step_s = ramp_step_s
        self.min_round_s = min_round_s
        start = max(self.floor, min(self.cap, self.RAMP_START))
        self.limit = float(start)
        self.ramping = start < self.cap
        self.w_max = float(self.cap)  # the window before the last cut
        self.background = 0.0  # learnt share of 429s that do not rise with load
        self.srtt: float | None = None  # smoothed latency of successful requests
        self.default_rtt_s = default_rtt_s
        self.in_flight = 0
        self.parked = 0  # slots whose request got 429 this round
        self.round = Round()
        self.round_start = now
        self.after_cut = False
        self._cut_share = 1.0  # the share of 429s in the round that caused the last cut
        self.probe_step = 1.0
        self.cuts = 0
        self.rounds = 0
        self.refused_total = 0
        self.peak = int(self.limit)
        self.reason = "ramp: start" if self.ramping else "start at max_concurrency"
        self._ramp_next = now + ramp_step_s
        self._ramp_step = Round()
        self._ramp_total = Round()
        self._refused_times: deque[float] = deque()

    # -- what the event loop asks -------------------------------------------------------
    @property
    def window(self) -> int:
        return max(self.floor, min(self.cap, int(self.limit)))

    def can_launch(self) -> bool:
        return self.in_flight + self.parked < self.window

    def next_deadline(self) -> float:
        """When ``tick`` has something to do (the ramp's next step or the round's end)."""
        if self.ramping:
            return self._ramp_next
        return self.round_start + self.round_length()

    def round_length(self) -> float:
        rtt = self.srtt if self.srtt is not None else self.default_rtt_s
        return max(self.min_round_s, rtt)

    def refused_since(self, t: float) -> int:
        """429s received since ``t`` (safe to call from another thread)."""
        times = list(self._refused_times)
        return sum(1 for x in times if x >= t)

    def refused_last_minute(self, now: float) -> int:
        while self._refused_times and self._refused_times[0] < now - 60.0:
            self._refused_times.popleft()
        return len(self._refused_times)

    # -- events ----------------------------------------------------------------------------
    def on_launch(self, now: float) -> int:
        """A request goes out; returns its ticket for ``on_result``."""
        self.tick(now)
        self.in_flight += 1
        self.round.launched += 1
        self.round.peak = max(self.round.peak, self.in_flight + self.parked)
        self._ramp_step.launched += 1
        return self.cuts

    def on_result(self, now: float, outcome: str, latency_s: float = 0.0, ticket: int = -1) -> None:
        """One attempt finished: ``OK`` (any answer but 429: the endpoint served it),
        ``REFUSED`` (429) or ``ERROR`` (no answer: reset, timeout, 5xx). An answer to a
        request launched before the last cut (its ``ticket``) is no evidence about the
        window now, so rounds count only answers to requests sent since."""
        self.in_flight = max(0, self.in_flight - 1)
        fresh = ticket < 0 or ticket == self.cuts
        if outcome == OK:
            if latency_s > 0:
                if self.srtt is None:
                    self.srtt = latency_s
                else:  # a straggler (a hung request) must not stretch the rounds
                    self.srtt = 0.75 * self.srtt + 0.25 * min(latency_s, 2 * self.srtt)
            if fresh:
                self.round.ok += 1
                self._ramp_step.ok += 1
        elif outcome == REFUSED:
            self.refused_total += 1
            self._refused_times.append(now)
            while self._refused_times[0] < now - 60.0:
                self._refused_times.popleft()
            if fresh:
                self.round.refused += 1
                self._ramp_step.refused += 1
            if not fresh or self.ramping or self.round.refused > self._tolerated(self.round):
                self.parked += 1
        elif fresh:
            self.round.errors += 1
        self.tick(now)

    def _tolerated(self, r: Round) -> float:
        """429s a round may hold before they count as overload (background share, 2 sigma)."""
        expected = self.background * max(r.ok + r.refused, r.launched)
        return expected + 2 * math.sqrt(expected) + 0.5

    def tick(self, now: float) -> None:
        """Advance the ramp and close rounds that are due (idempotent)."""
        if self.ramping:
            if now >= self._ramp_next:
                # One step per call, the next one a full step later: when the event loop runs
                # late, the ramp waits for it (and for the 429s it has not read yet) instead of
                # catching up several steps blind.
                self._ramp_tick()
                self._ramp_next = now + self.ramp_step_s
            if self.ramping:
                return
            self.round_start = now
        if now >= self.round_start + self.round_length():
            self._close_round(now)

    # -- the ramp -------------------------------------------------------------------------
    def _ramp_tick(self) -> None:
        step, self._ramp_step = self._ramp_step, Round()
        total = self._ramp_total
        total.launched += step.launched
        total.refused += step.refused
        # most of this step's new requests refused, or (answers can lag the steps on a busy
        # machine) a quarter of all the ramp's requests
        if (step.refused >= 2 and step.refused * 2 >= max(1, step.launched)) or (
            total.refused >= 4 and total.refused * 4 >= total.launched
        ):
            accepted = self.in_flight  # the requests the endpoint took (refused ones are back)
            before = int(self.limit)
            self.limit = float(max(self.floor, accepted))
            self.w_max = self.limit + max(1.0, step.refused / 8)
            self.ramping = False
            self.after_cut = True
            self._cut_share = step.refused / max(1, step.launched)
            self.cuts += 1
            self.round = Round()
            self.reason = (
                f"ramp stopped at {int(self.limit)}: {step.refused} of {step.launched} "
                f"new requests were refused (429) at window {before}"
            )
            return
        self.limit = min(float(self.cap), max(self.limit + 1, self.limit * self.RAMP_FACTOR))
        self.peak = max(self.peak, int(self.limit))
        if self.limit >= self.cap:
            self.ramping = False  # the ramp's answers count in the first round
            self.reason = f"ramp reached max_concurrency {self.cap}"
        else:
            self.reason = f"ramp: {int(self.limit)}"

    # -- rounds ---------------------------------------------------------------------------
    def _close_round(self, now: float) -> None:
        r, self.round = self.round, Round()
        self.round_start = now
        self.parked = 0
        answered = r.ok + r.refused
        if answered == 0 or (self.after_cut and answered < max(1, self.window // 4)):
            # idle, or too few answers to requests sent since the cut: nothing to learn yet
            if answered:
                self.round = r  # keep counting into the next round
            return
        self.rounds += 1
        share = r.refused / answered
        if self.after_cut and share <= self.BG_MAX:
            # The first answers to requests sent after a cut. If lowering the load did not
            # lower the share of 429s much, that share is not caused by the load.
            if share >= 0.7 * self._cut_share:
                self.background = share if self.background == 0 else (self.background + share) / 2
            else:
                self.background = min(self.background, share)
        expected = self.background * answered
        overloaded = r.refused > 0 and (
            share > self.BG_MAX or r.refused > expected + 2 * math.sqrt(expected) + 0.5
        )
        before = self.window
        if overloaded:
            self.after_cut = True
            self.cuts += 1
            # a pause (every answer refused) says nothing about the limit: keep the level to
            # refill to when it is over
            self.w_max = max(self.w_max, before) if r.ok == 0 else float(before)
            self._cut_share = share
            # the requests that were accepted together (a pause, all refused: the floor)
            self.limit = float(max(self.floor, before - r.refused))
            self.probe_step = 1.0
            self.reason = (
                f"cut {before} -> {self.window}: {r.refused} of {answered} answers were 429"
                + (f" (background {self.background:.0%})" if self.background else "")
            )
            return
        if not self.after_cut and share <= self.BG_MAX:
            self.background = 0.9 * self.background + 0.1 * share
        self.after_cut = False
        if r.peak < self.window - 1 and not r.refused:
            self.reason = f"hold {before}: fewer requests than the window to send"
            return  # the window was not the limit: a clean round says nothing about it
        if self.limit >= self.cap:
            self.limit = float(self.cap)
            if r.refused:
                self.reason = (
                    f"at max_concurrency {self.cap}; {r.refused} sporadic 429s ignored "
                    f"(background {self.background:.0%})"
                )
            return
        if self.limit < self.w_max:
            self.limit = min(float(self.cap), self.limit + max(1.0, (self.w_max - self.limit) / 2))
            self.reason = f"refill {before} -> {self.window} (last cut at {int(self.w_max)})"
        else:
            self.limit = min(float(self.cap), self.limit + self.probe_step)
            self.probe_step = min(max(1.0, self.limit / 4), self.probe_step * 2)
            self.reason = f"probe {before} -> {self.window}"
        if r.refused:
            self.reason += f"; {r.refused} sporadic 429s ignored"
        self.peak = max(self.peak, self.window)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The controller's state for progress displays and bench reports."""
        return {
            "window": self.window,
            "in_flight": self.in_flight,
            "refused_last_minute": self.refused_last_minute(now),
            "refused": self.refused_total,
            "cuts": self.cuts,
            "background_429": round(self.background, 4),
            "reason": self.reason,
        }


# ---------------------------------------------------------------------------------------------
# Rate limits


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str | None, now_epoch: float | None = None) -> float | None:
    """Seconds from a reset header: ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``, a
    plain number of seconds, or (some gateways) a Unix time."""
    if value is None:
        return None
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if number > 1e9:  # a Unix timestamp
            return max(0.0, number - (time.time() if now_epoch is None else now_epoch))
        return max(0.0, number)
    total, pos = 0.0, 0
    for m in _DURATION.finditer(value):
        if m.start() != pos:
            return None
        pos = m.end()
        n = float(m.group(1))
        total += n * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
    return total if pos == len(value) and pos else None


@dataclass(frozen=True)
class RateLimitInfo:
    """What an answer's ``x-ratelimit-*`` headers say (None: not sent)."""

    limit_requests: float | None = None
    remaining_requests: float | None = None
    reset_requests_s: float | None = None
    limit_tokens: float | None = None
    remaining_tokens: float | None = None
    reset_tokens_s: float | None = None


def _num(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def parse_ratelimit(headers: Mapping[str, str]) -> RateLimitInfo | None:
    """``x-ratelimit-*`` headers (case-insensitive mapping) or None when there are none."""
    if not any(
        name in headers
        for name in (
            "x-ratelimit-remaining-requests",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-limit-requests",
            "x-ratelimit-limit-tokens",
        )
    ):
        return None
    info = RateLimitInfo(
        _num(headers, "x-ratelimit-limit-requests"),
        _num(headers, "x-ratelimit-remaining-requests"),
        parse_duration(headers.get("x-ratelimit-reset-requests")),
        _num(headers, "x-ratelimit-limit-tokens"),
        _num(headers, "x-ratelimit-remaining-tokens"),
        parse_duration(headers.get("x-ratelimit-reset-tokens")),
    )
    return None if info == RateLimitInfo() else info


class _Bucket:
    """A token bucket holding one second's worth of a per-minute limit, refilled at
    ``SAFETY`` of the limit's rate: the endpoint counts a request when it arrives, a moment
    after we send it, and the margin keeps those moments from adding up to a 429."""

    SAFETY = 0.97

    def __init__(self, per_minute: float, now: float, level: float | None = None) -> None:
        self.set_limit(per_minute)
        self.level = self.capacity if level is None else level
        self.t = now

    def set_limit(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self.rate = self.SAFETY * per_minute / 60.0
        self.capacity = max(1.0, self.rate)

    def _refill(self, now: float) -> None:
        if now > self.t:
            self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
            self.t = now

    def delay(self, now: float, amount: float) -> float:
        self._refill(now)
        need = min(amount, self.capacity) - self.level
        return 0.0 if need <= 1e-9 else need / self.rate

    def take(self, now: float, amount: float) -> None:
        self._refill(now)
        self.level -= amount  # may go negative: a large request borrows from the future

    def observe(self, now: float, limit: float | None, remaining: float | None) -> None:
        """Adopt the endpoint's figures: its limit, and never more left than it says. The
        reset time is not needed here: OpenAI's is the time until the bucket is full again,
        which the refill at the limit's rate already implies (with nothing left it would be a
        whole minute, far later than the next request may go)."""
        if limit is not None and limit > 0 and limit != self.per_minute:
            self.set_limit(limit)
        self._refill(now)
        if remaining is not None:
            self.level = min(self.level, remaining)


class RatePacer:
    """Requests- and tokens-per-minute buckets for one endpoint. A dimension is paced once
    a limit is known (setting or header); until then it costs nothing."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None, now: float = 0.0):
        self.requests = _Bucket(rpm, now) if rpm else None
        self.tokens = _Bucket(tpm, now) if tpm else None
        self.paused_s = 0.0  # total time launches waited for the rate limits
        self.paused_until = 0.0  # nothing left and no limit known: wait for the reset
        self.reason = ""

    @property
    def active(self) -> bool:
        return self.requests is not None or self.tokens is not None or self.paused_until > 0

    def delay(self, now: float, tokens: float) -> float:
        """Seconds to wait before a request of ``tokens`` estimated tokens may go."""
        d = max(0.0, self.paused_until - now)
        if self.requests is not None:
            d = max(d, self.requests.delay(now, 1.0))
        if self.tokens is not None:
            d = max(d, self.tokens.delay(now, tokens))
        return d

    def take(self, now: float, tokens: float) -> None:
        if self.requests is not None:
            self.requests.take(now, 1.0)
        if self.tokens is not None:
            self.tokens.take(now, tokens)

    def observe(self, now: float, info: RateLimitInfo | None) -> None:
        """Adopt what the endpoint said about its limits."""
        if info is None:
            return
        # A bucket learnt from an answer starts empty: requests sent since that answer left
        # the endpoint are not counted in its ``remaining`` yet.
        if self.requests is None and info.limit_requests:
            self.requests = _Bucket(info.limit_requests, now, level=0.0)
        if self.tokens is None and info.limit_tokens:
            self.tokens = _Bucket(info.limit_tokens, now, level=0.0)
        if self.requests is not None:
            self.requests.observe(now, info.limit_requests, info.remaining_requests)
        if self.tokens is not None:
            self.tokens.observe(now, info.limit_tokens, info.remaining_tokens)
        for name, bucket, remaining, reset_s in (
            ("requests", self.requests, info.remaining_requests, info.reset_requests_s),
            ("tokens", self.tokens, info.remaining_tokens, info.reset_tokens_s),
        ):
            if bucket is None and remaining is not None and remaining <= 0 and reset_s:
                # the endpoint says "nothing left" without a limit to pace by: a global pause
                self.paused_until = max(self.paused_until, now + reset_s)
                self.reason = f"paused {reset_s:.1f} s: no {name} left until the reset"
