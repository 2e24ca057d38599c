"""The engine every generating stage uses: cached, retried, budget-capped chat completions.

Shape of a run (``Engine.run``)::

    caller thread                               engine I/O thread (asyncio)
    -------------                               ---------------------------
    pull requests lazily from the iterable
    prepare body + cache key, look up cache ──hit──▶ yield at once (no HTTP)
    reserve budget, submit in batches  ─────────────▶ JobQueue ─▶ per-endpoint workers
                                                       (window limiter, aiohttp, retries,
                                                        schema check + one repair)
    write finished outcomes to the cache ◀──────────── SimpleQueue of outcomes
    (one transaction per batch), then yield

Memory is bounded: at most ``window`` requests (2x the total concurrency) are between
"pulled from the iterable" and "yielded", however many the iterable holds. The caller's
iterable is consumed on the caller's thread (so it may use thread-bound things such as a
sqlite connection); only HTTP runs on the I/O thread. Everything is written to the cache
before it is yielded, so a kill -9 at any moment loses at most the requests in flight, and a
rerun reuses everything finished. ``arun`` is the same engine for async callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import (
    AuthError,
    BudgetExceeded,
    BuilderError,
    Interrupted,
    LLMError,
    QuotaError,
)
from builder.llm.budget import (
    PROMPT_SAFETY,
    Budget,
    Price,
    count_tokens,
    max_output_tokens,
    price_for,
    prompt_tokens,
    require_price,
)
from builder.llm.cache import Cache, CachedResponse, CacheEntry
from builder.llm.control import EndpointLimiter, JobQueue, backoff_delay, outcome_of
from builder.llm.embedded import EmbeddedServer
from builder.llm.endpoint import (
    Endpoint,
    Prepared,
    embedded_endpoint,
    endpoints_from_settings,
    prepare,
)
from builder.llm.progress import NoProgress, Progress, Snapshot, make_progress
from builder.llm.schema import check_output, repair_messages
from builder.llm.transport import AttemptError, Reply, Transport, make_transport
from builder.llm.window import ERROR, OK, RateLimitInfo
from builder.records import ChatRequest, ChatResult
from builder.settings.llm import LLMSettings

log = logging.getLogger("builder.llm")

DEFAULT_CACHE_DIR = ".corpus-cache"


def resolve_cache_dir(
    flag: str | os.PathLike[str] | None = None,
    settings: LLMSettings | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
) -> Path:
    """The cache directory: ``--cache-dir``, else CORPUS_CACHE_DIR, else ``[llm] cache_dir``
    (relative to ``root``, the config file's directory), else ``.corpus-cache/``."""
    if flag:
        return Path(flag)
    env = os.environ.get("CORPUS_CACHE_DIR")
    if env:
        return Path(env)
    if settings is not None and settings.cache_dir:
        p = Path(settings.cache_dir)
        return p if p.is_absolute() or root is None else Path(root) / p
    return Path(DEFAULT_CACHE_DIR)


# ---------------------------------------------------------------------------------------------
# Records


@dataclass
class EngineStats:
    """Counters over an engine's lifetime (all runs)."""

    results: int = 0  # yielded, any status
    cached: int = 0
    ok: int = 0
    length: int = 0
    invalid: int = 0
    failed: int = 0
    http_requests: int = 0  # chat-completion attempts sent
    retries: int = 0
    repairs: int = 0
    prompt_tokens: int = 0  # of results produced now (not cache hits)
    completion_tokens: int = 0
    cost: float = 0.0  # USD spent now

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ModelEstimate:
    """The part of an estimate that one model would serve."""

    model: str
    requests: float
    input_tokens: float
    output_tokens: float
    max_output_tokens: float
    cost: float | None  # None: no price for this model
    max_cost: float | None


@dataclass(frozen=True)
class Estimate:
    """What running ``requests`` would take (``Engine.estimate``, used by ``corpus plan``).

    Tokens and cost count only requests that are not cached yet. ``output_tokens`` assumes
    ``expected_output_fraction`` of each ``max_tokens``; ``max_*`` assume all of it.
    Prompt tokens are cl100k counts (other tokenizers give somewhat more).
    """

    requests: int
    cached: int
    input_tokens: int
    output_tokens: int
    max_output_tokens: int
    cost: float
    max_cost: float
    by_model: dict[str, ModelEstimate] = field(default_factory=dict)
    unpriced: tuple[str, ...] = ()

    @property
    def to_send(self) -> int:
        return self.requests - self.cached


# ---------------------------------------------------------------------------------------------
# Jobs and outcomes (internal)


class _Job:
    __slots__ = (
        "prep",
        "token",
        "attempts",
        "t_start",
        "last_error",
        "repair",
        "raws",
        "bodies",
        "prompt_tokens",
        "completion_tokens",
        "reserve",
    )

    def __init__(self, prep: Prepared, token: int, reserve: float) -> None:
        self.prep = prep
        self.token = token
        self.reserve = reserve
        self.attempts = 0
        self.t_start = 0.0
        self.last_error = ""
        self.repair: list[dict[str, Any]] | None = None  # messages of the repair retry
        self.raws: list[str] = []  # raw response bodies, in order
        self.bodies: list[dict[str, Any]] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0


@dataclass
class _Outcome:
    job: _Job
    status: str
    key: str
    endpoint: int
    text: str | None = None
    parsed: Any = None
    finish_reason: str | None = None
    model: str | None = None
    cost: float = 0.0
    latency_s: float = 0.0
    error: str | None = None
    fatal: BuilderError | None = None


_FATAL = {"auth": AuthError, "quota": QuotaError, "endpoint": LLMError}
_FATAL_HINT = {
    "auth": "check the key in the variable named by [llm] api_key_env",
    "quota": "add credit or raise the account's limits, then rerun (finished work is cached)",
    "endpoint": "check [llm] base_url (it usually ends in /v1) and model; `corpus llm check`",
}


class _Dispatch:
    """One run's worker tasks on one event loop (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        transports: list[Transport],
        deliver: Callable[[list[_Outcome]], None],
    ) -> None:
        self.engine = engine
        self.transports = transports
        self._deliver_batch = deliver
        self._pending: list[_Outcome] = []
        self.queue = JobQueue()
        self.tasks: list[asyncio.Task[None]] = []
        self.stopped = False

    def deliver(self, outcome: _Outcome) -> None:
        """Hand outcomes over in batches: everything finished in one turn of the event loop
        goes in one list, so the caller's thread wakes once per burst, not per request."""
        self._pending.append(outcome)
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            self._deliver_batch(batch)

    def start(self) -> None:
        for i, ep in enumerate(self.engine.endpoints):
            for _ in range(ep.max_concurrency):
                self.tasks.append(asyncio.get_running_loop().create_task(self._worker(i)))

    def submit(self, jobs: list[_Job]) -> None:
        for job in jobs:
            self.queue.put(job)

    async def close(self) -> None:
        self.stopped = True
        self.queue.clear()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        self._flush()  # finished outcomes not handed over yet: the caller stores them

    async def _worker(self, i: int) -> None:
        limiter = self.engine.limiters[i]
        while not self.stopped:
            await limiter.acquire()
            ticket: int | None = None
            outcome, latency, ratelimit = ERROR, 0.0, None
            try:
                job = await self.queue.get()
                try:
                    if limiter.pacer.active:
                        await limiter.pace(_tokens_estimate(job.prep.bodies[i]))
                    ticket = limiter.launch()
                    outcome, latency, ratelimit = await self._attempt(i, job)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug must not leave the caller waiting forever
                    log.exception("internal error on request %s", job.prep.request.id)
                    self.deliver(
                        _Outcome(
                            job,
                            "failed",
                            job.prep.keys[i],
                            i,
                            error=f"internal error: {exc.__class__.__name__}: {exc}",
                        )
                    )
            finally:
                limiter.release(ticket, outcome, latency, ratelimit)

    async def _attempt(self, i: int, job: _Job) -> tuple[str, float, RateLimitInfo | None]:
        """Send ``job`` once; returns what the concurrency window needs to know."""
        engine = self.engine
        stats = engine.stats
        if job.attempts == 0 and job.repair is None:
            job.t_start = time.perf_counter()
        job.attempts += 1
        stats.http_requests += 1
        if job.repair is None:
            body_json = job.prep.bodies[i]
        else:
            body = json.loads(job.prep.bodies[i])
            body["messages"] = job.repair
            body_json = json.dumps(body, ensure_ascii=False)
        stream = engine.settings.stream
        if stream:
            body_json = body_json[:-1] + ',"stream":true,"stream_options":{"include_usage":true}}'
        try:
            reply = await self.transports[i].chat(body_json.encode(), stream=stream)
        except AttemptError as err:
            self._failed_attempt(i, job, err)
            return outcome_of(err.status, False), 0.0, err.ratelimit
        self._judge(i, job, reply)
        return OK, reply.latency_s, reply.ratelimit

    def _failed_attempt(self, i: int, job: _Job, err: AttemptError) -> None:
        engine = self.engine
        ep = engine.endpoints[i]
        key = job.prep.keys[i]
        reason = ep.redact(err.reason)
        job.last_error = reason
        if err.kind in _FATAL:
            fatal = _FATAL[err.kind](reason, hint=_FATAL_HINT[err.kind])
            self.stopped = True  # launch nothing more; what is in flight may still finish
            self.queue.clear()
            self.deliver(_Outcome(job, "failed", key, i, error=reason, fatal=fatal))
            return
        if err.kind == "request":
            self.deliver(_Outcome(job, "failed", key, i, error=f"{reason} (not retried)"))
            return
        s = engine.settings
        elapsed = time.perf_counter() - job.t_start
        if job.attempts >= s.max_attempts:
            self.deliver(
                _Outcome(
                    job,
                    "failed",
                    key,
                    i,
                    error=f"gave up after {job.attempts} attempts over {elapsed:.1f} s: {reason}",
                )
            )
            return
        delay = backoff_delay(job.attempts, s.backoff_base_s, s.backoff_max_s, err.retry_after)
        if elapsed + delay > s.max_retry_time_s:
            self.deliver(
                _Outcome(
                    job,
                    "failed",
                    key,
                    i,
                    error=f"gave up after {job.attempts} attempts: the next retry would pass "
                    f"max_retry_time_s={s.max_retry_time_s:g}: {reason}",
                )
            )
            return
        engine.stats.retries += 1
        log.debug("retrying %s in %.2fs after: %s", job.prep.request.id, delay, reason)
        self.queue.put_later(job, delay)

    def _judge(self, i: int, job: _Job, reply: Reply) -> None:
        """Turn a good HTTP answer into an outcome (or a repair retry for bad structure)."""
        engine = self.engine
        ep = engine.endpoints[i]
        body = reply.body
        request = job.prep.request
        a = assess(request, body)
        pt, ct = usage_of(body, job.repair or request.messages, a.text)
        job.prompt_tokens += pt
        job.completion_tokens += ct
        job.raws.append(json.dumps(body, ensure_ascii=False) if reply.raw is None else reply.raw)
        job.bodies.append(body)
        if a.repairable and job.repair is None:
            engine.stats.repairs += 1
            job.repair = repair_messages(
                list(request.messages), a.text, a.error or "", a.status == "length"
            )
            self.queue.put(job, front=True)
            return
        price = engine.prices[i]
        cost = price.cost(job.prompt_tokens, job.completion_tokens) if price else 0.0
        model = ep.model if ep.embedded else (body.get("model") or ep.model)
        error = a.error
        if a.repairable:
            error = f"{error} (after one repair retry)"
        self.deliver(
            _Outcome(
                job,
                a.status,
                job.prep.keys[i],
                i,
                a.text,
                a.parsed,
                a.finish_reason,
                model,
                cost,
                time.perf_counter() - job.t_start,
                error,
            )
        )


@dataclass(frozen=True)
class Assessment:
    """What a chat-completion body means for a request (shared by online and batch modes)."""

    status: str  # ok | length | invalid
    text: str | None
    parsed: Any
    finish_reason: str | None
    error: str | None
    repairable: bool  # a schema request whose output was invalid or truncated


def assess(request: ChatRequest, body: dict[str, Any]) -> Assessment:
    """Judge a completion: ``length`` when truncated, ``invalid`` when a refusal, a content
    filter stop, or (schema requests) output that is not JSON matching the schema."""
    choice = body["choices"][0]
    message = choice.get("message") or {}
    text = message.get("content")
    finish = choice.get("finish_reason")
    refusal = message.get("refusal")
    if refusal:
        return Assessment(
            "invalid", text, None, finish, f"the model refused: {str(refusal)[:300]}", False
        )
    if finish == "content_filter":
        return Assessment(
            "invalid", text, None, finish, "stopped by the server's content filter", False
        )
    truncated = finish == "length"
    if request.schema is None:
        if truncated:
            return Assessment(
                "length", text, None, finish, "truncated: finish_reason=length", False
            )
        return Assessment("ok", text, None, finish, None, False)
    if truncated:
        return Assessment("length", text, None, finish, "truncated: finish_reason=length", True)
    parsed, reason = check_output(text, request.schema)
    if reason is None:
        return Assessment("ok", text, parsed, finish, None, False)
    return Assessment("invalid", text, None, finish, reason, True)


def _tokens_estimate(body_json: str) -> float:
    """Tokens a request counts against a tokens-per-minute limit, as OpenAI estimates them:
    the prompt (about 4 bytes per token) plus ``max_tokens``."""
    body = json.loads(body_json)
    return len(body_json) / 4 + (max_output_tokens(body) or 0)


def usage_of(body: dict[str, Any], messages: Any, text: str | None) -> tuple[int, int]:
    """(prompt, completion) tokens from the body's usage, estimated when a server omits it."""
    usage = body.get("usage") or {}
    pt = usage.get("prompt_tokens")
    ct = usage.get("completion_tokens")
    if not isinstance(pt, int):
        pt = prompt_tokens(messages)
    if not isinstance(ct, int):
        ct = count_tokens(text or "")
    return pt, ct


# ---------------------------------------------------------------------------------------------
# The driver: what a run does between the caller and the dispatcher (sync and async share it)


class _Driver:
    def __init__(
        self,
        engine: Engine,
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
        self.followers: dict[str, list[Prepared]] = {}  # in-flight key -> identical requests
        self.budget_stopped = False
        self.fatal: BuilderError | None = None
        self.snap = Snapshot(total=total)
        self.window = max(8, 2 * sum(ep.max_concurrency for ep in engine.endpoints))
        self.progress = NoProgress() if quiet else engine._progress_factory()
        self.progress.start(total)
        self.worst_price: Price | None = None
        if max_cost is not None:
            prices = [
                require_price(engine.settings, ep.model, embedded=ep.embedded)
                for ep in engine.endpoints
            ]
            self.worst_price = max(prices, key=lambda p: p.input + p.output)

    # -- admission -----------------------------------------------------------------------
    def admit(self, request: ChatRequest) -> ChatResult | tuple[ChatResult, Any] | _Job | None:
        """A result (cache hit, or a request the engine refuses), a job to send, or None when
        the budget cannot take it now (it is then ``held``)."""
        try:
            prep = prepare(self.engine.endpoints, request, self.engine.settings)
        except ValueError as exc:
            return self._emit_failed(request, str(exc))
        hit = self.engine.cache.get_any(prep.keys)
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

    def _reserve(self, prep: Prepared) -> _Job | None:
        worst = self._worst_case(prep)
        if not self.budget.fits(worst):
            self.held = prep
            return None
        token = next(self.tokens)
        self.budget.reserve(token, worst)
        self.followers[prep.keys[0]] = []
        self.outstanding += 1
        return _Job(prep, token, worst)

    def retry_held(self) -> _Job | None:
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

    def complete(self, outcomes: list[_Outcome]) -> list[Any]:
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


class _LoopThread:
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


# ---------------------------------------------------------------------------------------------
# The engine


class Engine:
    """Chat completions through the configured endpoints (or the embedded model), with the
    cache, retries, concurrency window, budget and progress described in this package.

    Satisfies ``builder.llm.base.LLM``. Use it through ``open_engine`` (which stops the
    embedded server and closes connections on exit). One run at a time per engine.
    """

    def __init__(
        self,
        settings: LLMSettings,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: Any = None,
    ) -> None:
        self.settings = settings
        self.cache_dir = Path(cache_dir) if cache_dir else resolve_cache_dir(None, settings)
        self.cache = Cache(self.cache_dir)
        eps = endpoints_from_settings(settings)
        self.embedded: EmbeddedServer | None = None
        if not eps or settings.embedded:
            eps.append(embedded_endpoint(settings))
            self.embedded = EmbeddedServer(self.cache_dir, settings.embedded_start_timeout_s)
        self.endpoints: list[Endpoint] = eps
        self.limiters = [
            EndpointLimiter(
                ep.max_concurrency,
                settings.min_concurrency,
                requests_per_minute=ep.max_requests_per_minute,
                tokens_per_minute=ep.max_tokens_per_minute,
            )
            for ep in self.endpoints
        ]
        self.prices: list[Price | None] = [
            price_for(settings, ep.model, embedded=ep.embedded) for ep in self.endpoints
        ]
        self.stats = EngineStats()
        self._progress = progress
        self._io: _LoopThread | None = None
        self._transports: list[Transport] | None = None
        self._closed = False

    # -- identity ------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The model recorded in provenance (the first endpoint's)."""
        return self.endpoints[0].model

    def request_sha256(self, request: ChatRequest) -> str:
        """The cache key of ``request`` on the first endpoint (results carry the key of the
        endpoint that actually answered)."""
        return prepare(self.endpoints, request, self.settings).keys[0]

    def is_cached(self, request: ChatRequest) -> bool:
        keys = prepare(self.endpoints, request, self.settings).keys
        return any(self.cache.contains(k) for k in keys)

    def _progress_factory(self) -> Progress:
        return make_progress(self._progress, self.settings.progress_interval_s)

    # -- estimate ------------------------------------------------------------------------
    def estimate(self, requests: Iterable[ChatRequest]) -> Estimate:
        """Requests, cache hits, tokens and cost of running ``requests`` (nothing is sent)."""
        s = self.settings
        weights = [ep.max_concurrency for ep in self.endpoints]
        share = [w / sum(weights) for w in weights]
        n = cached = 0
        tin = tout = tmax = 0
        for request in requests:
            n += 1
            prep = prepare(self.endpoints, request, s)
            if any(self.cache.contains(k) for k in prep.keys):
                cached += 1
                continue
            body = json.loads(prep.bodies[0])
            tin += prompt_tokens(body["messages"])
            mo = max_output_tokens(body) or s.max_tokens
            tmax += mo
            tout += round(mo * s.expected_output_fraction)
        by_model: dict[str, ModelEstimate] = {}
        unpriced = []
        cost = cost_max = 0.0
        for ep, sh, price in zip(self.endpoints, share, self.prices, strict=True):
            if price is None:
                unpriced.append(ep.model)
            c = price.cost(int(tin * sh), int(tout * sh)) if price else None
            cm = price.cost(int(tin * sh), int(tmax * sh)) if price else None
            prev = by_model.get(ep.model)
            by_model[ep.model] = ModelEstimate(
                ep.model,
                (prev.requests if prev else 0) + (n - cached) * sh,
                (prev.input_tokens if prev else 0) + tin * sh,
                (prev.output_tokens if prev else 0) + tout * sh,
                (prev.max_output_tokens if prev else 0) + tmax * sh,
                None if c is None else (prev.cost or 0) + c if prev else c,
                None if cm is None else (prev.max_cost or 0) + cm if prev else cm,
            )
            cost += c or 0.0
            cost_max += cm or 0.0
        return Estimate(
            n, cached, tin, tout, tmax, cost, cost_max, by_model, tuple(sorted(set(unpriced)))
        )

    # -- lifecycle -----------------------------------------------------------------------
    def _ensure_started(self) -> None:
        """Start the embedded server (first cache miss only: warm reruns never start it)."""
        if self._closed:
            raise LLMError("the engine is closed", hint="open a new one with open_engine()")
        if self.embedded is not None and not self.embedded.running:
            base_url = self.embedded.start()
            for ep in self.endpoints:
                if ep.embedded:
                    ep.base_url = base_url

    def _io_thread(self) -> _LoopThread:
        if self._io is None:
            self._io = _LoopThread()
            self._transports = [make_transport(ep, self.settings) for ep in self.endpoints]
        return self._io

    def close(self) -> None:
        """Close connections, stop the I/O thread and the embedded server. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._io is not None:
                transports = self._transports or []

                async def _close() -> None:
                    for t in transports:
                        await t.close()

                with contextlib.suppress(Exception):
                    self._io.call(_close(), timeout=10)
                self._io.stop()
                self._io = None
        finally:
            if self.embedded is not None:
                self.embedded.stop()
            self.cache.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- synchronous runs ----------------------------------------------------------------
    def run(
        self, requests: Iterable[ChatRequest], *, max_cost: float | None = None
    ) -> Iterator[ChatResult]:
        """Yield one ``ChatResult`` per request as each completes (cache hits at once).

        Failures are results (``status='failed'`` with the reason), never dropped. When the
        budget stopped the run, every finished result is yielded first and then
        ``BudgetExceeded`` is raised; auth/quota/wrong-URL errors raise after yielding
        what finished.
        """
        if self.settings.batch:
            from builder.llm.batch import run_batch

            for result, _ in run_batch(self, requests, max_cost=max_cost, raw=False):
                yield result
            return
        yield from self._run_sync(requests, max_cost, raw=False)

    def run_with_responses(
        self, requests: Iterable[ChatRequest], *, max_cost: float | None = None
    ) -> Iterator[tuple[ChatResult, list[dict[str, Any]] | None]]:
        """Like ``run`` but each result comes with the full response bodies (the last one is
        the answer; two when a repair retry happened; None for a request never answered)."""
        if self.settings.batch:
            from builder.llm.batch import run_batch

            yield from run_batch(self, requests, max_cost=max_cost, raw=True)
            return
        yield from self._run_sync(requests, max_cost, raw=True)

    def complete(self, request: ChatRequest) -> ChatResult:
        """Run one request and return its result (no progress display for single calls)."""
        if self.settings.batch:
            return list(self.run([request]))[0]
        return list(self._run_sync([request], None, raw=False, quiet=True))[0]

    def _run_sync(
        self,
        requests: Iterable[ChatRequest],
        max_cost: float | None,
        raw: bool,
        quiet: bool = False,
    ) -> Iterator[Any]:
        total = len(requests) if hasattr(requests, "__len__") else None  # type: ignore[arg-type]
        drv = _Driver(self, max_cost, raw, total, quiet)
        it = iter(requests)
        outq: queue.SimpleQueue[list[_Outcome]] = queue.SimpleQueue()
        io: _LoopThread | None = None
        dispatch: _Dispatch | None = None
        to_send: list[_Job] = []
        exhausted = False

        def flush() -> None:
            nonlocal io, dispatch
            if not to_send:
                return
            if dispatch is None:
                self._ensure_started()
                io = self._io_thread()
                assert self._transports is not None
                dispatch = _Dispatch(self, self._transports, outq.put)
                io.loop.call_soon_threadsafe(dispatch.start)
            jobs = list(to_send)
            to_send.clear()
            io.loop.call_soon_threadsafe(dispatch.submit, jobs)  # type: ignore[union-attr]

        try:
            while True:
                while drv.fatal is None and drv.outstanding < drv.window:
                    if drv.held is not None:
                        job = drv.retry_held()
                        if job is None:
                            break
                        to_send.append(job)
                        continue
                    if exhausted:
                        break
                    try:
                        request = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    got = drv.admit(request)
                    if isinstance(got, _Job):
                        to_send.append(got)
                        if len(to_send) >= 64:
                            flush()
                    elif got is not None:
                        flush()  # keep the I/O side busy while the caller handles a hit
                        yield got
                        drv.progress.update(drv.refresh_snap())
                flush()
                if drv.fatal is not None:
                    break
                if drv.outstanding == 0:
                    if drv.held is not None:
                        drv.give_up_held()
                        continue
                    if exhausted:
                        break
                    continue
                # Wait in short slices: a blocking get() would keep Ctrl-C (delivered to the
                # main thread only between bytecodes) waiting for the next result, which can
                # be minutes away on a slow endpoint.
                while True:
                    try:
                        outcomes = outq.get(timeout=0.2)
                        break
                    except queue.Empty:
                        continue
                while len(outcomes) < 1024:
                    try:
                        outcomes = outcomes + outq.get_nowait()
                    except queue.Empty:
                        break
                yield from drv.complete(outcomes)
        finally:
            if dispatch is not None and io is not None:
                with contextlib.suppress(Exception):
                    io.call(dispatch.close(), timeout=30)
                leftovers = []
                while True:
                    try:
                        leftovers.extend(outq.get_nowait())
                    except queue.Empty:
                        break
                if leftovers:  # finished but not yet yielded: keep them in the cache
                    with contextlib.suppress(BuilderError):
                        drv.complete(leftovers)
            drv.progress.close(drv.refresh_snap())
        drv.finish()

    # -- asynchronous runs ---------------------------------------------------------------
    async def arun(
        self,
        requests: Iterable[ChatRequest] | AsyncIterable[ChatRequest],
        *,
        max_cost: float | None = None,
    ) -> AsyncIterator[ChatResult]:
        """``run`` for async callers, on the caller's event loop (its own connections)."""
        total = len(requests) if hasattr(requests, "__len__") else None  # type: ignore[arg-type]
        drv = _Driver(self, max_cost, False, total)
        aiter_ = requests.__aiter__() if hasattr(requests, "__aiter__") else None
        it = None if aiter_ is not None else iter(requests)  # type: ignore[arg-type]
        outq: asyncio.Queue[list[_Outcome]] = asyncio.Queue()
        transports: list[Transport] = []
        dispatch: _Dispatch | None = None
        exhausted = False
        try:
            while True:
                to_send: list[_Job] = []
                while drv.fatal is None and drv.outstanding < drv.window:
                    if drv.held is not None:
                        job = drv.retry_held()
                        if job is None:
                            break
                        to_send.append(job)
                        continue
                    if exhausted:
                        break
                    try:
                        request = await aiter_.__anext__() if aiter_ else next(it)  # type: ignore[arg-type]
                    except (StopIteration, StopAsyncIteration):
                        exhausted = True
                        break
                    got = drv.admit(request)
                    if isinstance(got, _Job):
                        to_send.append(got)
                    elif got is not None:
                        yield got
                if to_send:
                    if dispatch is None:
                        await asyncio.to_thread(self._ensure_started)
                        transports = [make_transport(ep, self.settings) for ep in self.endpoints]
                        dispatch = _Dispatch(self, transports, outq.put_nowait)
                        dispatch.start()
                    dispatch.submit(to_send)
                if drv.fatal is not None:
                    break
                if drv.outstanding == 0:
                    if drv.held is not None:
                        drv.give_up_held()
                        continue
                    if exhausted:
                        break
                    continue
                outcomes = await outq.get()
                while not outq.empty() and len(outcomes) < 1024:
                    outcomes = outcomes + outq.get_nowait()
                for r in drv.complete(outcomes):
                    yield r
        finally:
            if dispatch is not None:
                await dispatch.close()
                leftovers = []
                while not outq.empty():
                    leftovers.extend(outq.get_nowait())
                if leftovers:
                    with contextlib.suppress(BuilderError):
                        drv.complete(leftovers)
            for t in transports:
                await t.close()
            drv.progress.close(drv.refresh_snap())
        drv.finish()

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        """``complete`` for async callers."""
        async for result in self.arun([request]):
            return result
        raise LLMError(f"no result for request {request.id}")


# ---------------------------------------------------------------------------------------------
# open_engine


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While the engine is open, SIGTERM unwinds like Ctrl-C (so the embedded server is
    stopped and finished work saved) instead of killing the process on the spot."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        yield  # the application has its own handler: leave it alone
        return

    def handler(signum: int, frame: Any) -> None:
        exc = Interrupted("terminated (SIGTERM): finished work is saved; rerun to resume")
        exc.exit_code = 128 + signal.SIGTERM  # 143, the shell's convention (Ctrl-C: 130)
        raise exc

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def open_engine(
    settings: LLMSettings | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Any = None,
) -> Iterator[Engine]:
    """The engine for ``settings`` (default: ``LLMSettings()``, the embedded model).

    ``cache_dir`` overrides ``resolve_cache_dir``; ``progress`` is None (bar on a TTY, log
    lines otherwise), False (silent) or a ``builder.llm.progress.Progress``. On exit
    (normal, error, Ctrl-C or SIGTERM) connections are closed and the embedded server, if
    it was started, is stopped.

    Example::

        with open_engine(cfg.llm, cache_dir=cache_dir) as llm:
            for result in llm.run(requests, max_cost=5.0):
                ...
    """
    engine = Engine(settings or LLMSettings(), cache_dir=cache_dir, progress=progress)
    try:
        with _sigterm_as_interrupt():
            yield engine
    finally:
        engine.close()
