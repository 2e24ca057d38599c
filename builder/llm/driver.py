"""What a run does between the caller and the dispatcher (``Driver``: admission, cache hits,
budget reservations, identical requests sharing one call, storing outcomes before they are
yielded, progress), and the background event loop synchronous callers use (``LoopThread``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import threading
import time
from collections import deque
from typing import Any

from builder.errors import (
    BudgetExceeded,
    BuilderError,
)
from builder.llm.budget import (
    PROMPT_SAFETY,
    Budget,
    Price,
    max_output_tokens,
    prompt_tokens,
    require_price,
)
from builder.llm.cache import CachedResponse, CacheEntry
from builder.llm.core import EngineCore
from builder.llm.dispatch import Job, Outcome
from builder.llm.endpoint import (
    Prepared,
    prepare_signature,
    prepared,
)
from builder.llm.progress import NoProgress, Snapshot
from builder.llm.schema import check_output
from builder.records import ChatRequest, ChatResult

# ---------------------------------------------------------------------------------------------
# The driver: what a run does between the caller and the dispatcher (sync and async share it)


class Driver:
    def __init__(
        self,
        engine: EngineCore,
        max_cost: float | None,
        raw: bool,
        total: int | None,
        quiet: bool = False,
    ) -> None:
        self.engine = engine
        self.budget = Budget(max_cost)
        self.raw = raw
        self.outstanding = 0
        self.tokens = itertools.count()
        self.held: Prepared | None = None
        #: staged requests: (request, prepared or None, its error, cache hit, ``stored``
        #: when looked up)
        self.ready: deque[tuple[ChatRequest, Prepared | None, str | None, Any, int]] = deque()
        self.stored = 0  # batches of outcomes stored so far (a staged lookup's age)
        self.followers: dict[str, list[Prepared]] = {}  # in-flight key -> identical requests
        self.budget_stopped = False
        self.fatal: BuilderError | None = None
        self.snap = Snapshot(total=total)
        self.window = max(8, 2 * sum(ep.max_concurrency for ep in engine.endpoints))
        #: requests prepared elsewhere under this signature are not prepared again
        self.signature = prepare_signature(engine.endpoints, engine.settings)
        self.progress = NoProgress() if quiet else engine.new_progress()
        self.progress.start(total)
        self.worst_price: Price | None = None
        if max_cost is not None:
            prices = [
                require_price(engine.settings, ep.model, embedded=ep.embedded)
                for ep in engine.endpoints
            ]
            self.worst_price = max(prices, key=lambda p: p.input + p.output)

    # -- admission -----------------------------------------------------------------------
    def room(self) -> int:
        """How many more requests admission may pull from the caller now."""
        return self.window - self.outstanding if self.fatal is None else 0

    def stage(self, requests: list[ChatRequest]) -> None:
        """Prepare ``requests`` and look all their keys up in the cache at once (one query
        instead of one per request); ``admit_next`` then admits them in order."""
        engine = self.engine
        staged: list[tuple[ChatRequest, Prepared | None, str | None]] = []
        keys: list[str] = []
        for request in requests:
            try:
                prep = prepared(engine.endpoints, request, engine.settings, self.signature)
            except ValueError as exc:
                staged.append((request, None, str(exc)))
                continue
            staged.append((request, prep, None))
            keys.extend(prep.keys)
        hits = engine.cache.get_many(keys) if keys else {}
        for request, prep, error in staged:
            hit = None
            if prep is not None:
                hit = next((hits[k] for k in prep.keys if k in hits), None)
            self.ready.append((request, prep, error, hit, self.stored))

    def admit_next(self) -> ChatResult | tuple[ChatResult, Any] | Job | None:
        """Admit the next staged request (see ``admit``)."""
        request, prep, error, hit, stored = self.ready.popleft()
        if prep is None:
            return self._emit_failed(request, error or "")
        if hit is None and stored != self.stored:
            # Outcomes were stored since the lookup (admission waited for the budget): an
            # identical request may have been answered meanwhile.
            hit = self.engine.cache.get_any(prep.keys)
        return self._admit(prep, hit)

    def admit(self, request: ChatRequest) -> ChatResult | tuple[ChatResult, Any] | Job | None:
        """A result (cache hit, or a request the engine refuses), a job to send, or None when
        the budget cannot take it now (it is then ``held``)."""
        try:
            prep = prepared(self.engine.endpoints, request, self.engine.settings, self.signature)
        except ValueError as exc:
            return self._emit_failed(request, str(exc))
        return self._admit(prep, self.engine.cache.get_any(prep.keys))

    def _admit(
        self, prep: Prepared, hit: CachedResponse | None
    ) -> ChatResult | tuple[ChatResult, Any] | Job | None:
        if hit is not None:
            return self._emit_hit(prep, hit)
        waiting = self.followers.get(prep.keys[0])
        if waiting is not None:  # already in flight: answer both with one request
            waiting.append(prep)
            self.outstanding += 1
            return None
        if self.budget_stopped:
            self.budget.stopped += 1
            return None
        return self._reserve(prep)

    def _worst_case(self, prep: Prepared) -> float:
        if self.worst_price is None or (
            self.worst_price.input == 0 and self.worst_price.output == 0
        ):
            return 0.0
        body = json.loads(prep.bodies[0])
        prompt = int(prompt_tokens(body["messages"]) * PROMPT_SAFETY)
        out = max_output_tokens(body) or self.engine.settings.max_tokens
        one = self.worst_price.cost(prompt, out)
        if prep.request.schema is not None:  # a repair retry resends the prompt plus the reply
            one += self.worst_price.cost(prompt + out + 100, out)
        return one

    def _reserve(self, prep: Prepared) -> Job | None:
        worst = self._worst_case(prep)
        if not self.budget.fits(worst):
            self.held = prep
            return None
        token = next(self.tokens)
        self.budget.reserve(token, worst)
        self.followers[prep.keys[0]] = []
        self.outstanding += 1
        return Job(prep, token, worst)

    def retry_held(self) -> Job | None:
        """Try the held request again (something settled); None: still does not fit."""
        prep, self.held = self.held, None
        assert prep is not None
        return self._reserve(prep)

    def give_up_held(self) -> None:
        """Nothing is in flight and the held request still does not fit: stop launching."""
        self.held = None
        self.budget_stopped = True
        self.budget.stopped += 1

    # -- results -------------------------------------------------------------------------
    def _count(self, status: str, cached: bool) -> None:
        st = self.engine.stats
        st.results += 1
        self.snap.done += 1
        if cached:
            st.cached += 1
            self.snap.cached += 1
        if status == "failed":
            st.failed += 1
            self.snap.failed += 1
        elif status == "ok":
            st.ok += 1
        elif status == "length":
            st.length += 1
        elif status == "invalid":
            st.invalid += 1

    def _emit_hit(self, prep: Prepared, hit: CachedResponse) -> Any:
        request = prep.request
        status, parsed, error = hit.status, hit.parsed, hit.error
        if status == "invalid" and request.schema is not None and hit.text is not None:
            # Judge a cached invalid reply again with today's parser: a fix to the checker
            # must not need a cache purge (or paying for the same answer twice).
            reparsed, reason = check_output(hit.text, request.schema)
            if reason is None:
                status, parsed, error = "ok", reparsed, None
        self._count(status, True)
        result = ChatResult(
            request_id=request.id,
            status=status,
            text=hit.text,
            parsed=parsed,
            finish_reason=hit.finish_reason,
            model=hit.model,
            endpoint=hit.base_url,
            prompt_tokens=hit.prompt_tokens,
            completion_tokens=hit.completion_tokens,
            cost=hit.cost,
            cached=True,
            latency_s=hit.latency_s,
            request_sha256=hit.key,
            error=error,
            metadata=dict(request.metadata),
        )
        if self.raw:
            raw = self.engine.cache.raw(hit.key)
            return (result, raw[1] if raw else None)
        return result

    def _emit_failed(self, request: ChatRequest, error: str) -> Any:
        self._count("failed", False)
        result = ChatResult(
            request_id=request.id,
            status="failed",
            error=error,
            metadata=dict(request.metadata),
            model=self.engine.model_name,
        )
        return (result, None) if self.raw else result

    def complete(self, outcomes: list[Outcome]) -> list[Any]:
        """Store finished outcomes (one transaction), settle the budget, build results."""
        engine = self.engine
        entries = []
        for o in outcomes:
            if o.fatal is not None:
                continue
            if o.status != "failed":
                ep = engine.endpoints[o.endpoint]
                entries.append(
                    CacheEntry(
                        key=o.key,
                        base_url=ep.cache_url,
                        model=o.model or ep.model,
                        status=o.status,
                        text=o.text,
                        parsed=o.parsed,
                        finish_reason=o.finish_reason,
                        prompt_tokens=o.job.prompt_tokens,
                        completion_tokens=o.job.completion_tokens,
                        cost=o.cost,
                        latency_s=o.latency_s,
                        attempts=o.job.attempts,
                        error=o.error,
                        request=o.job.prep.bodies[o.endpoint],
                        response="[" + ",".join(o.job.raws) + "]",
                    )
                )
        if entries:
            engine.cache.put_many(entries)
            self.stored += 1
        results: list[Any] = []
        st = engine.stats
        for o in outcomes:
            self.outstanding -= 1
            self.budget.settle(o.job.token, o.cost)
            if o.fatal is not None:
                if self.fatal is None:
                    self.fatal = o.fatal
                self.outstanding -= len(self.followers.pop(o.job.prep.keys[0], ()))
                continue
            ep = engine.endpoints[o.endpoint]
            request = o.job.prep.request
            st.prompt_tokens += o.job.prompt_tokens
            st.completion_tokens += o.job.completion_tokens
            st.cost += o.cost
            self.snap.completion_tokens += o.job.completion_tokens
            self.snap.cost += o.cost
            self._count(o.status, False)
            result = ChatResult(
                request_id=request.id,
                status=o.status,
                text=o.text,
                parsed=o.parsed,
                finish_reason=o.finish_reason,
                model=o.model or ep.model,
                endpoint=ep.cache_url,
                prompt_tokens=o.job.prompt_tokens,
                completion_tokens=o.job.completion_tokens,
                cost=o.cost,
                cached=False,
                latency_s=o.latency_s,
                request_sha256=o.key,
                error=o.error,
                metadata=dict(request.metadata),
            )
            results.append((result, o.job.bodies or None) if self.raw else result)
            for follower in self.followers.pop(o.job.prep.keys[0], ()):
                # the same request again while this one was in flight: same answer, no HTTP
                self.outstanding -= 1
                self._count(o.status, True)
                copy = dataclasses.replace(
                    result,
                    request_id=follower.request.id,
                    metadata=dict(follower.request.metadata),
                    cached=True,
                )
                results.append((copy, o.job.bodies or None) if self.raw else copy)
        self.refresh_snap()
        self.progress.update(self.snap)
        return results

    def refresh_snap(self) -> Snapshot:
        """Fill the progress counters that live with the endpoints: requests being served
        (sent, not answered), the rest of what is outstanding (queued for a slot, a rate
        limit or a retry), the windows and their last move."""
        snap = self.snap
        limiters = self.engine.limiters
        serving = sum(lim.in_flight for lim in limiters)
        snap.in_flight = min(serving, self.outstanding)
        snap.queued = max(0, self.outstanding - snap.in_flight)
        snap.window = sum(lim.window for lim in limiters)
        now = time.monotonic()
        snap.refused_last_minute = sum(lim.controller.refused_since(now - 60.0) for lim in limiters)
        snap.window_reason = "; ".join(
            lim.controller.reason for lim in limiters if lim.controller.reason
        )
        return snap

    def finish(self) -> None:
        """Raise what stopped the run early (after every finished result was yielded)."""
        if self.fatal is not None:
            raise self.fatal
        if self.budget_stopped:
            b = self.budget
            raise BudgetExceeded(
                f"budget reached: spent ${b.spent:.4f} of --max-cost ${b.max_cost:g}; "
                f"{b.stopped} request(s) not sent",
                hint="rerun with a higher --max-cost to continue; finished work is cached",
            )


# ---------------------------------------------------------------------------------------------
# The background event loop for synchronous callers


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it roughly halves the event loop's own CPU per request), else
    the standard loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LoopThread:
    def __init__(self) -> None:
        self.loop = new_event_loop()
        self.thread = threading.Thread(target=self._main, name="builder-llm-io", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()
