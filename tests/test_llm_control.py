"""The concurrency window on a simulated clock, rate-limit pacing, the endpoint limiter, the job
queue and backoff (builder.llm.window, builder.llm.control)."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from builder.llm.control import EndpointLimiter, JobQueue, backoff_delay, outcome_of
from builder.llm.transport import parse_retry_after
from builder.llm.window import (
    ERROR,
    OK,
    REFUSED,
    RateLimitInfo,
    RatePacer,
    WindowController,
    parse_duration,
    parse_ratelimit,
)
from tests.support.window_sim import Endpoint, Simulation

# -- the window on a simulated clock (deterministic: seeded, no event loop, no wall clock) --


def test_no_fault_ramps_to_max_concurrency_at_once():
    sim = Simulation(WindowController(256), Endpoint(latency=1.0), 2560).run()
    assert sim.refused == 0 and sim.c.window == 256
    assert sim.window_at(0.4) == 256  # the ramp takes well under one round trip
    assert sim.finish_time < 10.5  # ideal: 10 rounds of 1 s


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_converges_near_a_fixed_concurrency_limit_with_few_429s(seed):
    sim = Simulation(WindowController(256), Endpoint(limit=64), 2000, seed=seed).run()
    windows_late = [w for t, w in sim.windows if t > 5]
    assert windows_late and all(60 <= w <= 70 for w in windows_late), sim.windows
    assert sim.max_window < 100  # the ramp stopped soon after the limit
    assert sim.refused <= 0.05 * 2000
    assert sim.finish_time <= 2000 / 64 / 0.9  # >= 90% of the limit's throughput
    assert sim.c.cuts >= 2 and sim.c.background == 0.0


def test_ignores_sporadic_429s_that_do_not_rise_with_load():
    sim = Simulation(WindowController(256), Endpoint(sporadic=0.05), 5000, seed=3).run()
    assert min(w for t, w in sim.windows if t > 1.5) >= 200  # never collapses
    assert sim.c.window == 256
    assert 0.02 <= sim.c.background <= 0.1  # learnt: these 429s are not the load's
    assert sim.c.cuts <= 3
    clean = Simulation(WindowController(256), Endpoint(), 5000).run()
    assert clean.finish_time / sim.finish_time >= 0.8  # >= 80% of the no-fault throughput


def test_sporadic_429s_answered_after_the_latency_are_ignored_too():
    ep = Endpoint(sporadic=0.05, refuse_latency=1.0)
    sim = Simulation(WindowController(256), ep, 5000, seed=4).run()
    assert min(w for t, w in sim.windows if t > 1.5) >= 200
    assert sim.c.background > 0.02


def test_a_plain_aimd_would_collapse_where_this_window_does_not():
    """The same sporadic 429s with background learning disabled: the window falls, which
    shows that the learning is what keeps it up (the test above is not vacuous)."""

    class NoLearning(WindowController):
        BG_MAX = 0.0

    sim = Simulation(NoLearning(256), Endpoint(sporadic=0.05), 5000, seed=3).run()
    assert sim.c.cuts > 5 and min(w for t, w in sim.windows if t > 1.5) < 200


@pytest.mark.parametrize("lag", [0.03, 0.1])
def test_a_late_event_loop_still_converges_and_ignores_sporadic_429s(lag):
    """A busy (or slower) machine: the engine's loop runs only every ``lag`` seconds, so it
    reads answers (429s included), closes rounds and launches late and in bursts. The ramp
    waits for the loop instead of running blind, so the limit is found with few 429s, and
    sporadic 429s still do not collapse the window."""
    sim = Simulation(WindowController(256), Endpoint(limit=64), 2000, loop_lag=lag).run()
    assert all(60 <= w <= 72 for t, w in sim.windows if t > 5), sim.windows
    assert sim.max_window < 100 and sim.refused <= 0.05 * 2000
    assert sim.finish_time <= 2000 / 64 / 0.9
    ep = Endpoint(sporadic=0.05)
    sim = Simulation(WindowController(256), ep, 5000, seed=3, loop_lag=lag).run()
    assert min(w for t, w in sim.windows if t > 1.5) >= 200 and sim.c.window == 256


def test_recovers_quickly_after_a_burst_of_429s():
    ep = Endpoint(limit=100, burst=(10.0, 15.0))
    sim = Simulation(WindowController(256), ep, 5000).run()
    assert sim.window_at(9.5) >= 95
    assert sim.window_at(14.9) <= 20  # cut once per round during the burst
    assert min(w for t, w in sim.windows if 10 < t < 15) >= 1
    assert sim.window_at(15 + 5.5) >= 90  # back near the limit within a few round trips
    assert sim.done == 5000


def test_floor_keeps_probing_and_the_cap_holds():
    ep = Endpoint(burst=(0.0, 30.0))
    sim = Simulation(WindowController(64, floor=4), ep, 10).run(until=29.0)
    assert sim.c.window == 4 and min(w for _, w in sim.windows) == 4
    assert sim.attempts > 4 * 20  # the floor kept sending every round
    sim = Simulation(WindowController(8), Endpoint(), 100).run()
    assert sim.max_window == 8


def test_decreases_at_most_once_per_round_trip():
    c = WindowController(100)
    c.ramping, c.limit = False, 100.0
    tickets = [c.on_launch(0.0) for _ in range(100)]
    for t in tickets[:30]:
        c.on_result(0.5, REFUSED, 0.0, t)
    for t in tickets[30:]:
        c.on_result(1.0, OK, 1.0, t)
    c.tick(1.01)
    assert c.cuts == 1 and c.window == 70  # 30 429s in one round: one cut
    late = c.on_launch(1.02)
    c.on_result(1.03, REFUSED, 0.0, tickets[0])  # from before the cut: parked, no evidence
    assert c.cuts == 1 and c.parked == 1
    c.on_result(1.04, OK, 1.0, late)
    assert c.round.ok == 1 and c.round.refused == 0


def test_rate_limit_headers_pace_requests_before_any_429():
    """Headers arrive with answers: only requests sent before the first answer can meet a
    429; from then on the pacer keeps under the limit. Blind, 429s go on all run long."""
    ep = Endpoint(rpm=3000, send_headers=True)
    sim = Simulation(WindowController(256), ep, 1000, pacer=RatePacer()).run()
    assert sim.done == 1000 and 0 < sim.refused <= 16
    first_answer = sim.refused_at[0] + ep.refuse_latency
    assert all(t <= first_answer for t in sim.refused_at)  # none once the headers were read
    assert 1000 / 50 <= sim.finish_time < 1000 / 50 + 2  # 50 requests/s, as the headers said
    blind = Simulation(WindowController(256), Endpoint(rpm=3000), 1000).run()
    assert blind.refused > 2 * sim.refused and max(blind.refused_at) > 5


def test_token_headers_pace_estimated_tokens_before_any_429():
    """The same with ``x-ratelimit-*-tokens`` only: requests of 100 tokens against 60,000
    tokens per minute (10 requests per second)."""
    ep = Endpoint(tpm=60_000, send_headers=True)
    sim = Simulation(WindowController(256), ep, 500, pacer=RatePacer(), tokens=100).run()
    assert sim.done == 500 and 0 < sim.refused <= 16
    assert all(t <= sim.refused_at[0] + ep.refuse_latency for t in sim.refused_at)
    assert sim.pacer is not None and sim.pacer.tokens is not None and sim.pacer.requests is None
    assert sim.finish_time >= 500 / 10 - 1
    blind = Simulation(WindowController(256), Endpoint(tpm=60_000), 500, tokens=100).run()
    assert blind.refused > 2 * sim.refused and max(blind.refused_at) > 5


def test_configured_requests_per_minute_paces_an_endpoint_without_headers():
    sim = Simulation(WindowController(256), Endpoint(), 600, pacer=RatePacer(rpm=1200)).run()
    assert sim.refused == 0
    assert sim.finish_time >= 600 / 20 - 1  # 20 requests/s
    ep = Endpoint(rpm=1200)  # the same limit enforced by an endpoint that sends no headers
    sim = Simulation(WindowController(256), ep, 600, pacer=RatePacer(rpm=1200)).run()
    assert sim.refused == 0 and sim.done == 600
    assert Simulation(WindowController(256), Endpoint(rpm=1200), 600).run().refused > 0


def test_configured_tokens_per_minute_paces_an_endpoint_without_headers():
    ep = Endpoint(tpm=60_000)
    sim = Simulation(WindowController(256), ep, 500, pacer=RatePacer(tpm=60_000), tokens=100)
    assert sim.run().refused == 0 and sim.done == 500
    assert sim.finish_time >= 500 / 10 - 1  # 10 requests of 100 tokens per second


def test_a_global_pause_holds_every_launch_until_the_reset():
    """From 5 s to 15 s every answer is 429 with "nothing left until the reset" and no limit:
    after the first such answer nothing is sent until the reset (Retry-After alone, by
    contrast, holds back only the request that got it)."""
    ep = Endpoint(pause=(5.0, 15.0))
    sim = Simulation(WindowController(256), ep, 5000, pacer=RatePacer()).run()
    assert sim.done == 5000 and sim.refused > 0
    first = sim.refused_at[0]
    assert all(t <= first + ep.refuse_latency for t in sim.refused_at)  # one volley only
    assert sim.pacer is not None and "paused" in sim.pacer.reason
    blind = Simulation(WindowController(256), Endpoint(pause=(5.0, 15.0)), 5000).run()
    assert blind.refused > 5 * sim.refused and max(blind.refused_at) > 10


def test_pacer_pauses_every_launch_when_nothing_is_left():
    p = RatePacer()  # "nothing left" with no limit to pace by: a global pause until the reset
    p.observe(0.0, RateLimitInfo(remaining_requests=0, reset_requests_s=7))
    assert p.active and p.delay(0.0, 1) == pytest.approx(7.0)
    assert "paused" in p.reason
    assert p.delay(7.0, 1) == 0.0
    p = RatePacer()  # with the limit, the bucket paces: the next request in 1/rate
    p.observe(0.0, RateLimitInfo(limit_requests=600, remaining_requests=0, reset_requests_s=7))
    assert p.delay(0.0, 1) == pytest.approx(1 / (10 * 0.97))
    p = RatePacer(tpm=6000)  # 100 tokens per second (paced at 97%)
    assert p.delay(0.0, 90) == 0.0
    p.take(0.0, 90)
    assert p.delay(0.0, 50) == pytest.approx((50 - 7) / 97)


def test_parse_rate_limit_headers():
    info = parse_ratelimit(
        {
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-requests": "9999",
            "x-ratelimit-reset-requests": "6ms",
            "x-ratelimit-limit-tokens": "2000000",
            "x-ratelimit-remaining-tokens": "1999000",
            "x-ratelimit-reset-tokens": "1m30.5s",
        }
    )
    assert info == RateLimitInfo(10000, 9999, 0.006, 2_000_000, 1_999_000, 90.5)
    assert parse_ratelimit({"content-type": "application/json"}) is None
    assert parse_duration("1h2m3s") == 3723 and parse_duration("2") == 2
    # the forms OpenAI sends: minutes and seconds, seconds, milliseconds
    assert parse_duration("6m0s") == 360 and parse_duration("1s") == 1
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1m30s") == 90 and parse_duration("0.5s") == 0.5
    assert parse_duration("6m0") is None and parse_duration("s") is None
    assert parse_duration("soon") is None and parse_duration("") is None
    assert parse_duration("1700000060", now_epoch=1700000000) == 60


def test_outcome_of_an_attempt():
    assert outcome_of(429, False) == REFUSED
    assert outcome_of(500, False) == OK  # answered, just not well: no load signal
    assert outcome_of(None, False) == ERROR
    assert outcome_of(None, True) == OK


# -- the limiter on an event loop ------------------------------------------------------------


def test_limiter_blocks_at_the_window_and_wakes_waiters():
    lim = EndpointLimiter(2, 1)

    async def main():
        await lim.acquire()
        await lim.acquire()
        waiter = asyncio.ensure_future(lim.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()
        ticket = lim.launch()
        lim.release(ticket, OK, 0.01)
        await asyncio.wait_for(waiter, 1)
        assert lim.held == 2
        cancelled = asyncio.ensure_future(lim.acquire())
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        lim.release(None)
        lim.release(None)
        assert lim.held == 0 and lim.in_flight == 0

    asyncio.run(main())


def test_a_refused_slot_is_parked_until_the_round_ends():
    clock = [0.0]
    lim = EndpointLimiter(1, 1, clock=lambda: clock[0])

    async def main():
        await lim.acquire()
        lim.release(lim.launch(), REFUSED)
        waiter = asyncio.ensure_future(lim.acquire())
        await asyncio.sleep(0)
        assert not waiter.done() and lim.controller.parked == 1
        clock[0] = 2.0  # past the round's end (default round trip: 1 s)
        lim._on_timer()
        await asyncio.wait_for(waiter, 1)
        assert lim.controller.parked == 0 and lim.held == 1

    asyncio.run(main())


def test_a_429_saying_nothing_is_left_pauses_every_launch_of_the_limiter():
    """The headers of a refused answer reach the pacer through ``release``: with "no requests
    left, reset in 5 s" and no limit, every launch waits for the reset (on the limiter's
    clock); a 429 without such headers holds back nothing but its own request."""
    clock = [0.0]
    lim = EndpointLimiter(4, 1, clock=lambda: clock[0])

    async def main():
        await lim.acquire()
        lim.release(lim.launch(), REFUSED)  # a plain 429: no pause
        assert not lim.pacer.active
        await asyncio.wait_for(lim.pace(1.0), 1)
        await lim.acquire()
        pause = RateLimitInfo(remaining_requests=0, reset_requests_s=5.0)
        lim.release(lim.launch(), REFUSED, ratelimit=pause)
        waiting = asyncio.ensure_future(lim.pace(1.0))
        await asyncio.sleep(0)
        assert not waiting.done() and lim.pacer.paused_s == pytest.approx(5.0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        clock[0] = 5.0  # the reset has come
        await asyncio.wait_for(lim.pace(1.0), 1)
        assert lim.snapshot()["pacing"].startswith("paused 5.0 s")

    asyncio.run(main())


def test_job_queue_puts_retries_in_front():
    async def main():
        q = JobQueue()
        q.put("a")
        q.put("b")
        q.put_later("retry", 0)
        assert q.delayed == 1
        while q.delayed:  # let the loop fire the timer (no wall-clock wait)
            await asyncio.sleep(0)
        got = [await q.get() for _ in range(3)]
        assert got == ["retry", "a", "b"]
        q.put_later("dropped", 10)
        assert q.clear() == [] and q.delayed == 0

    asyncio.run(main())


@given(
    attempt=st.integers(1, 30),
    base=st.floats(0.01, 5),
    cap=st.floats(0.01, 60),
    r=st.floats(0, 1),
    retry_after=st.none() | st.floats(0, 100),
)
def test_backoff_is_bounded_jittered_and_honours_retry_after(attempt, base, cap, r, retry_after):
    d = backoff_delay(attempt, base, cap, retry_after, rand=lambda: r)
    ceiling = min(cap, base * 2 ** (attempt - 1))
    assert ceiling / 2 <= d or retry_after is not None
    if retry_after is None:
        assert d <= ceiling + 1e-9
    else:
        assert d >= retry_after and d <= max(ceiling, retry_after * 1.1) + 1e-9


def test_retries_told_the_same_retry_after_do_not_all_fire_at_once():
    """100 requests refused together with ``Retry-After: 1`` come back spread over a tenth of
    a second (the jitter), none before the second is up."""
    rng = random.Random(7)
    delays = sorted(backoff_delay(1, 0.5, 30.0, 1.0, rand=rng.random) for _ in range(100))
    assert delays[0] >= 1.0 and delays[-1] <= 1.1
    assert delays[-1] - delays[0] >= 0.08
    assert len({round(d, 4) for d in delays}) >= 90  # not in lockstep
    # without Retry-After, the exponential backoff is jittered too
    plain = {backoff_delay(3, 0.5, 30.0, rand=rng.random) for _ in range(100)}
    assert min(plain) >= 1.0 and max(plain) <= 2.0 and max(plain) - min(plain) >= 0.8


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({}) is None
