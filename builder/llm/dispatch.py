"""The engine's worker tasks on its event loop: each takes a slot in its endpoint's window,
a job from the queue, waits for the rate limits, sends, and turns the answer into an outcome
(or a retry after a jittered backoff, a repair retry, or a fatal error that stops the run).
``assess`` judges a completion body (shared with Batch API mode).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from builder.errors import (
    AuthError,
    BuilderError,
    LLMError,
    QuotaError,
)
from builder.llm.budget import (
    count_tokens,
    max_output_tokens,
    prompt_tokens,
)
from builder.llm.control import JobQueue, backoff_delay, outcome_of
from builder.llm.core import EngineCore
from builder.llm.endpoint import (
    Prepared,
)
from builder.llm.schema import check_output, repair_messages
from builder.llm.transport import AttemptError, Reply, Transport
from builder.llm.window import ERROR, OK, RateLimitInfo
from builder.reasoning import message_text
from builder.records import ChatRequest

log = logging.getLogger("builder.llm")


class Job:
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
class Outcome:
    job: Job
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


class Dispatch:
    """One run's worker tasks on one event loop (see the module docstring)."""

    def __init__(
        self,
        engine: EngineCore,
        transports: list[Transport],
        deliver: Callable[[list[Outcome]], None],
    ) -> None:
        self.engine = engine
        self.transports = transports
        self._deliver_batch = deliver
        self._pending: list[Outcome] = []
        self.queue = JobQueue()
        self.tasks: list[asyncio.Task[None]] = []
        self.stopped = False

    def deliver(self, outcome: Outcome) -> None:
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

    def submit(self, jobs: list[Job]) -> None:
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
                        Outcome(
                            job,
                            "failed",
                            job.prep.keys[i],
                            i,
                            error=f"internal error: {exc.__class__.__name__}: {exc}",
                        )
                    )
            finally:
                limiter.release(ticket, outcome, latency, ratelimit)

    async def _attempt(self, i: int, job: Job) -> tuple[str, float, RateLimitInfo | None]:
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

    def _failed_attempt(self, i: int, job: Job, err: AttemptError) -> None:
        engine = self.engine
        ep = engine.endpoints[i]
        key = job.prep.keys[i]
        reason = ep.redact(err.reason)
        job.last_error = reason
        if err.kind in _FATAL:
            fatal = _FATAL[err.kind](reason, hint=_FATAL_HINT[err.kind])
            self.stopped = True  # launch nothing more; what is in flight may still finish
            self.queue.clear()
            self.deliver(Outcome(job, "failed", key, i, error=reason, fatal=fatal))
            return
        if err.kind == "request":
            self.deliver(Outcome(job, "failed", key, i, error=f"{reason} (not retried)"))
            return
        s = engine.settings
        elapsed = time.perf_counter() - job.t_start
        if job.attempts >= s.max_attempts:
            self.deliver(
                Outcome(
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
                Outcome(
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

    def _judge(self, i: int, job: Job, reply: Reply) -> None:
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
            Outcome(
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
    text = message_text(message)  # reasoning kept as a <think> prefix; split on read
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
