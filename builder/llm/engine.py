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

The worker tasks live in ``dispatch`` and what runs on the caller's side (admission, budget,
storing and yielding outcomes, progress) in ``driver``; this module ties them to endpoints,
cache and lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import (
    BuilderError,
    Interrupted,
    LLMError,
)
from builder.llm.budget import (
    Price,
    max_output_tokens,
    price_for,
    prompt_tokens,
)
from builder.llm.cache import Cache
from builder.llm.control import EndpointLimiter
from builder.llm.core import EngineStats
from builder.llm.dispatch import Dispatch, Job, Outcome, assess, usage_of  # noqa: F401  (re-exported)
from builder.llm.driver import Driver, LoopThread, new_event_loop  # noqa: F401
from builder.llm.embedded import EmbeddedServer
from builder.llm.endpoint import (
    Endpoint,
    embedded_endpoint,
    endpoints_from_settings,
    prepare,
)
from builder.llm.progress import Progress, make_progress
from builder.llm.transport import Transport
from builder.llm.transports import make_transport
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
        self._io: LoopThread | None = None
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

    def new_progress(self) -> Progress:
        """A progress reporter for one run (``progress`` as given to ``open_engine``)."""
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
    def ensure_started(self) -> None:
        """Start the embedded server (first cache miss only: warm reruns never start it)."""
        if self._closed:
            raise LLMError("the engine is closed", hint="open a new one with open_engine()")
        if self.embedded is not None and not self.embedded.running:
            base_url = self.embedded.start()
            for ep in self.endpoints:
                if ep.embedded:
                    ep.base_url = base_url

    def io_thread(self) -> tuple[LoopThread, list[Transport]]:
        """The engine's I/O thread and its transports (one per endpoint, in order), made on
        first use; closed by ``close``. Batch mode and ``corpus llm check`` send through them."""
        if self._io is None or self._transports is None:
            self._io = LoopThread()
            self._transports = [make_transport(ep, self.settings) for ep in self.endpoints]
        return self._io, self._transports

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
        yield from self.run_online(requests, max_cost, raw=False)

    def run_with_responses(
        self, requests: Iterable[ChatRequest], *, max_cost: float | None = None
    ) -> Iterator[tuple[ChatResult, list[dict[str, Any]] | None]]:
        """Like ``run`` but each result comes with the full response bodies (the last one is
        the answer; two when a repair retry happened; None for a request never answered)."""
        if self.settings.batch:
            from builder.llm.batch import run_batch

            yield from run_batch(self, requests, max_cost=max_cost, raw=True)
            return
        yield from self.run_online(requests, max_cost, raw=True)

    def complete(self, request: ChatRequest) -> ChatResult:
        """Run one request and return its result (no progress display for single calls)."""
        if self.settings.batch:
            return list(self.run([request]))[0]
        return list(self.run_online([request], None, raw=False, quiet=True))[0]

    def run_online(
        self,
        requests: Iterable[ChatRequest],
        max_cost: float | None,
        raw: bool,
        quiet: bool = False,
    ) -> Iterator[Any]:
        """``run`` (or, ``raw``, ``run_with_responses``) through the online API whatever
        ``[llm] batch`` says: Batch API mode sends its repair retries this way."""
        total = len(requests) if hasattr(requests, "__len__") else None  # type: ignore[arg-type]
        drv = Driver(self, max_cost, raw, total, quiet)
        it = iter(requests)
        outq: queue.SimpleQueue[list[Outcome]] = queue.SimpleQueue()
        io: LoopThread | None = None
        dispatch: Dispatch | None = None
        to_send: list[Job] = []
        exhausted = False

        def flush() -> None:
            nonlocal io, dispatch
            if not to_send:
                return
            if dispatch is None:
                self.ensure_started()
                io, transports = self.io_thread()
                dispatch = Dispatch(self, transports, outq.put)
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
                    if not drv.ready:
                        if exhausted:
                            break
                        # Pull what the window has room for and look it up in one query:
                        # still at most ``window`` requests between pulled and yielded.
                        room = drv.room()
                        batch = list(itertools.islice(it, room))
                        exhausted = len(batch) < room
                        if not batch:
                            break
                        drv.stage(batch)
                    got = drv.admit_next()
                    if isinstance(got, Job):
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
                    if exhausted and not drv.ready:
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
                outcomes = _gather(outq, outcomes, drv.outstanding)
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
        drv = Driver(self, max_cost, False, total)
        aiter_ = requests.__aiter__() if hasattr(requests, "__aiter__") else None
        it = None if aiter_ is not None else iter(requests)  # type: ignore[arg-type]
        outq: asyncio.Queue[list[Outcome]] = asyncio.Queue()
        transports: list[Transport] = []
        dispatch: Dispatch | None = None
        exhausted = False
        try:
            while True:
                to_send: list[Job] = []
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
                    if isinstance(got, Job):
                        to_send.append(got)
                    elif got is not None:
                        yield got
                if to_send:
                    if dispatch is None:
                        await asyncio.to_thread(self.ensure_started)
                        transports = [make_transport(ep, self.settings) for ep in self.endpoints]
                        dispatch = Dispatch(self, transports, outq.put_nowait)
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


#: Outcomes stored per cache transaction that ``_gather`` waits for (at most ``COALESCE_S``)
#: while many requests are in flight: one SQLite commit per 8 rows cost ~60% more CPU per
#: row than one per 64, and the caller's thread asleep meanwhile leaves the GIL to the I/O.
COALESCE = 64
COALESCE_S = 0.01


def _gather(
    outq: queue.SimpleQueue[list[Outcome]], outcomes: list[Outcome], outstanding: int
) -> list[Outcome]:
    """``outcomes`` plus what else has finished: everything queued (up to 1024), and, when
    more than ``COALESCE`` requests are outstanding, up to ``COALESCE_S`` of waiting for a
    batch of ``COALESCE`` (a lone request is never held back)."""
    deadline = None
    while len(outcomes) < 1024:
        try:
            outcomes = outcomes + outq.get_nowait()
            continue
        except queue.Empty:
            pass
        if len(outcomes) >= COALESCE or outstanding <= COALESCE:
            break
        now = time.monotonic()
        if deadline is None:
            deadline = now + COALESCE_S
        if now >= deadline:
            break
        try:
            outcomes = outcomes + outq.get(timeout=deadline - now)
        except queue.Empty:
            break
    return outcomes


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
