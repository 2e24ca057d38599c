"""AIMD limiter, job queue and backoff (builder.llm.control)."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from builder.llm.control import AIMDLimiter, JobQueue, backoff_delay
from builder.llm.transport import parse_retry_after


def test_aimd_halves_once_per_generation_and_recovers_additively():
    lim = AIMDLimiter(32, min_limit=2)

    async def main():
        gens = [await lim.acquire() for _ in range(10)]
        for g in gens:  # ten 429s from requests launched together: one decrease
            lim.on_overload(g)
        assert lim.current == 16 and lim.decreases == 1
        lim.on_overload(await lim.acquire())  # a request launched after the decrease
        assert lim.current == 8
        for _ in range(11):
            lim.release()
        for _ in range(1000):  # +1/limit each: about +1 per round of `limit` requests
            lim.on_success()
        assert lim.current == 32  # back to the cap, never above
        for _ in range(20):
            lim.on_overload(lim.generation)
        assert lim.current == 2  # never below min_concurrency

    asyncio.run(main())


def test_limiter_blocks_at_the_limit_and_wakes_waiters():
    lim = AIMDLimiter(2)

    async def main():
        await lim.acquire()
        await lim.acquire()
        waiter = asyncio.ensure_future(lim.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()
        lim.release()
        await asyncio.wait_for(waiter, 1)
        assert lim.in_flight == 2
        cancelled = asyncio.ensure_future(lim.acquire())
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        lim.release()
        lim.release()
        assert lim.in_flight == 0

    asyncio.run(main())


def test_job_queue_puts_retries_in_front():
    async def main():
        q = JobQueue()
        q.put("a")
        q.put("b")
        q.put_later("retry", 0.01)
        assert q.delayed == 1
        await asyncio.sleep(0.05)
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


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({}) is None
