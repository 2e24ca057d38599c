"""Batch API mode (``[llm] batch = true`` or ``corpus llm run --batch``): half the price,
results within the completion window instead of seconds.

For each chunk of at most ``batch_max_requests`` requests that are not cached yet, the
engine writes the Batch input JSONL (``custom_id`` = cache key, so results land in the same
cache as online ones), uploads it (``POST /files``), creates the batch (``POST /batches``)
and records the batch id and its keys in the cache database *before* polling, so a killed
process picks up polling on the next run instead of paying twice. It polls
``GET /batches/{id}`` every ``batch_poll_s`` seconds; on a terminal status it downloads the
output (and error) files, judges each answer exactly as online mode does, and stores it.
Items an ``expired`` batch did not finish are resubmitted (up to 3 times each). Failed items
become ``failed`` results (never cached, so a rerun tries them again).

Structured-output requests whose batched answer is invalid or truncated get their one
repair retry online (the repair depends on the bad answer, so it cannot be batched ahead).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import aiohttp

from builder.errors import BudgetExceeded, ConfigError, LLMError
from builder.llm.budget import (
    PROMPT_SAFETY,
    Budget,
    max_output_tokens,
    price_for,
    prompt_tokens,
    require_price,
)
from builder.llm.cache import CacheEntry
from builder.llm.endpoint import Prepared, prepare
from builder.llm.jobfile import to_request
from builder.llm.progress import Snapshot
from builder.llm.transport import AttemptError, Transport
from builder.records import ChatRequest, ChatResult

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
MAX_RESUBMITS = 3


def _chat_result(request: ChatRequest, **kw: Any) -> ChatResult:
    return ChatResult(request_id=request.id, metadata=dict(request.metadata), **kw)


def _usage(body: dict[str, Any]) -> tuple[int, int]:
    usage = body.get("usage") or {}
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def usage_of_pair(first_body: dict[str, Any], repair: ChatResult) -> tuple[int, int]:
    pt, ct = _usage(first_body)
    return pt + repair.prompt_tokens, ct + repair.completion_tokens


class _BatchRun:
    def __init__(self, engine: Any, max_cost: float | None, raw: bool) -> None:
        self.engine = engine
        self.raw = raw
        idx = [i for i, ep in enumerate(engine.endpoints) if not ep.embedded]
        if not idx:
            raise ConfigError(
                "Batch API mode needs an OpenAI-compatible endpoint with a Batch API; the "
                "embedded server has none",
                hint="set [llm] base_url/model, or turn batch mode off",
            )
        self.i = idx[0]
        self.ep = engine.endpoints[self.i]
        self.price = price_for(engine.settings, self.ep.model, batch=True)
        if max_cost is not None and self.price is None:
            require_price(engine.settings, self.ep.model, batch=True)
        self.budget = Budget(max_cost)
        self.resubmits: dict[str, int] = {}
        self.failures: dict[str, str] = {}
        self.snap = Snapshot()
        self.progress = engine.new_progress()
        self.io, transports = engine.io_thread()
        self.transport: Transport = transports[self.i]

    # -- HTTP (on the engine's I/O thread) -----------------------------------------------
    def _call(self, method: str, path: str, **kw: Any) -> Any:
        s = self.engine.settings
        deadline = time.monotonic() + s.max_retry_time_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return self.io.call(self.transport.request_json(method, path, **kw))
            except AttemptError as err:
                reason = self.ep.redact(err.reason)
                if err.kind != "retry" or attempt >= s.max_attempts:
                    raise LLMError(
                        f"Batch API call {method} {path} failed: {reason}",
                        hint="check the endpoint supports the Batch API; `corpus llm check`",
                    ) from None
                from builder.llm.control import backoff_delay

                delay = backoff_delay(attempt, s.backoff_base_s, s.backoff_max_s, err.retry_after)
                if time.monotonic() + delay > deadline:
                    raise LLMError(
                        f"Batch API call {method} {path} kept failing: {reason}"
                    ) from None
                time.sleep(delay)

    def _submit(self, preps: list[Prepared]) -> str:
        keys = [p.keys[self.i] for p in preps]
        lines = "".join(
            '{"custom_id":'
            + json.dumps(k)
            + ',"method":"POST","url":"/v1/chat/completions","body":'
            + p.bodies[self.i]
            + "}\n"
            for k, p in zip(keys, preps, strict=True)
        )
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field(
            "file",
            lines.encode(),
            filename=f"batch-{uuid.uuid4().hex[:8]}.jsonl",
            content_type="application/jsonl",
        )
        upload = self._call("POST", "files", data=form)
        batch = self._call(
            "POST",
            "batches",
            json_body={
                "input_file_id": upload["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": self.engine.settings.batch_completion_window,
            },
        )
        self.engine.cache.add_batch(
            batch["id"],
            self.ep.cache_url,
            upload["id"],
            [(k, p.bodies[self.i]) for k, p in zip(keys, preps, strict=True)],
        )
        return str(batch["id"])

    def _wait(self, batch_id: str) -> dict[str, Any]:
        while True:
            batch = self._call("GET", f"batches/{batch_id}")
            status = batch.get("status", "")
            if status in TERMINAL:
                return batch
            self.engine.cache.set_batch_status(batch_id, status)
            self.progress.update(self.snap)
            time.sleep(self.engine.settings.batch_poll_s)

    def _ingest(self, batch_id: str, requests: dict[str, ChatRequest]) -> None:
        """Store a finished batch's answers; remember its failed items."""
        from builder.llm.dispatch import assess, usage_of

        batch = self._wait(batch_id)
        items = self.engine.cache.batch_items(batch_id)
        keys = set(items)
        seen: set[str] = set()
        entries: list[CacheEntry] = []
        repairs: list[tuple[str, dict[str, Any]]] = []
        for file_key in ("output_file_id", "error_file_id"):
            file_id = batch.get(file_key)
            if not file_id:
                continue
            content = self._call("GET", f"files/{file_id}/content")
            for line in content.decode("utf-8", "replace").splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key = item.get("custom_id")
                if key not in keys:
                    continue
                seen.add(key)
                resp = item.get("response") or {}
                body = resp.get("body")
                if (
                    resp.get("status_code") != 200
                    or not isinstance(body, dict)
                    or not body.get("choices")
                ):
                    err = item.get("error") or (body or {}).get("error") or {}
                    msg = err.get("message") if isinstance(err, dict) else str(err)
                    self.failures[key] = self.ep.redact(
                        f"batch item failed (HTTP {resp.get('status_code')}): {msg}"
                    )
                    continue
                request = requests.get(key)
                if request is None:  # a batch from an earlier (killed) run
                    request = to_request(key, json.loads(items[key]))
                a = assess(request, body)
                if a.repairable:
                    if key in requests:
                        repairs.append((key, body))
                    # else: left out; the run that has this request resubmits and repairs it
                    continue
                pt, ct = usage_of(body, request.messages, a.text)
                cost = self.price.cost(pt, ct) if self.price else 0.0
                entries.append(
                    CacheEntry(
                        key=key,
                        base_url=self.ep.cache_url,
                        model=body.get("model") or self.ep.model,
                        status=a.status,
                        text=a.text,
                        parsed=a.parsed,
                        finish_reason=a.finish_reason,
                        prompt_tokens=pt,
                        completion_tokens=ct,
                        cost=cost,
                        latency_s=0.0,
                        attempts=1,
                        error=a.error,
                        request=json.dumps({"batch_id": batch_id}),
                        response="[" + json.dumps(body, ensure_ascii=False) + "]",
                    )
                )
        if entries:
            self.engine.cache.put_many(entries)
        for e in entries:
            self.budget.settle(e.key, e.cost)
            self._spent(e.cost, e.prompt_tokens, e.completion_tokens)
        if repairs:
            self._repair_online(repairs, requests)
        status = batch.get("status")
        for key in keys - seen:
            if status == "expired":
                continue  # resubmitted by the caller
            errors = batch.get("errors") or {}
            detail = json.dumps(errors)[:300] if errors else "no output for this item"
            self.failures.setdefault(key, f"batch {batch_id} {status}: {detail}")
        for key in self.failures:
            self.budget.settle(key, 0.0)
        self.engine.cache.set_batch_status(batch_id, "ingested")

    def _repair_online(
        self, repairs: list[tuple[str, dict[str, Any]]], requests: dict[str, ChatRequest]
    ) -> None:
        """The one repair retry of invalid structured answers, sent online (unbatched)."""
        from builder.llm.dispatch import assess
        from builder.llm.endpoint import response_format
        from builder.llm.schema import check_output, repair_messages

        engine = self.engine
        fixes: dict[str, tuple[ChatRequest, Any, dict[str, Any]]] = {}
        for key, body in repairs:
            request = requests[key]
            a = assess(request, body)
            params = dict(request.params)
            params["response_format"] = response_format(self.ep.kind, request.schema or {})
            fixed = ChatRequest(
                id=key,
                messages=tuple(
                    repair_messages(
                        list(request.messages), a.text, a.error or "", a.status == "length"
                    )
                ),
                params=params,
                sample_index=request.sample_index,
            )
            fixes[key] = (fixed, a, body)
        entries = []
        for result, bodies in engine.run_online([f[0] for f in fixes.values()], None, raw=True):
            key = result.request_id
            _, first, first_body = fixes[key]
            if result.status == "failed":
                self.failures[key] = f"repair retry failed: {result.error}"
                self.budget.settle(key, 0.0)
                continue
            status, parsed, error = result.status, None, None
            if status == "ok":
                parsed, reason = check_output(result.text, requests[key].schema or {})
                if reason is not None:
                    status, error = "invalid", f"{reason} (after one repair retry)"
            else:
                error = f"{first.error} (after one repair retry)"
            pt, ct = usage_of_pair(first_body, result)
            cost = (self.price.cost(*_usage(first_body)) if self.price else 0.0) + result.cost
            entries.append(
                CacheEntry(
                    key=key,
                    base_url=self.ep.cache_url,
                    model=result.model or self.ep.model,
                    status=status,
                    text=result.text,
                    parsed=parsed,
                    finish_reason=result.finish_reason,
                    prompt_tokens=pt,
                    completion_tokens=ct,
                    cost=cost,
                    latency_s=result.latency_s,
                    attempts=2,
                    error=error,
                    request=json.dumps({"repair_of": key}),
                    response=json.dumps([first_body, *(bodies or [])], ensure_ascii=False),
                )
            )
        if entries:
            engine.cache.put_many(entries)
        for e in entries:
            self.budget.settle(e.key, e.cost)
            self._spent(e.cost, e.prompt_tokens, e.completion_tokens)

    def _spent(self, cost: float, pt: int, ct: int) -> None:
        st = self.engine.stats
        st.cost += cost
        st.prompt_tokens += pt
        st.completion_tokens += ct
        self.snap.cost += cost
        self.snap.completion_tokens += ct

    # -- the run -------------------------------------------------------------------------
    def _worst(self, prep: Prepared) -> float:
        if self.price is None:
            return 0.0
        body = json.loads(prep.bodies[self.i])
        return self.price.cost(
            int(prompt_tokens(body["messages"]) * PROMPT_SAFETY),
            max_output_tokens(body) or self.engine.settings.max_tokens,
        )

    def _emit(self, prep: Prepared, key: str, cached: bool = False) -> Any:
        request = prep.request
        hit = self.engine.cache.get(key)
        st = self.engine.stats
        st.results += 1
        self.snap.done += 1
        if hit is None:
            st.failed += 1
            self.snap.failed += 1
            result = _chat_result(
                request,
                status="failed",
                error=self.failures.get(key, "no answer"),
                request_sha256=key,
                model=self.ep.model,
                endpoint=self.ep.cache_url,
            )
            return (result, None) if self.raw else result
        setattr(st, hit.status, getattr(st, hit.status) + 1)
        result = _chat_result(
            request,
            status=hit.status,
            text=hit.text,
            parsed=hit.parsed,
            finish_reason=hit.finish_reason,
            model=hit.model,
            endpoint=hit.base_url,
            prompt_tokens=hit.prompt_tokens,
            completion_tokens=hit.completion_tokens,
            cost=hit.cost,
            cached=cached,
            latency_s=hit.latency_s,
            request_sha256=key,
            error=hit.error,
        )
        if self.raw:
            raw = self.engine.cache.raw(key)
            return (result, raw[1] if raw else None)
        return result

    def run(self, requests: Iterable[ChatRequest]) -> Iterator[Any]:
        engine = self.engine
        cache = engine.cache
        self.progress.start(None)
        try:
            for batch_id, _, _ in cache.open_batches(self.ep.cache_url):  # from a killed run
                self._ingest(batch_id, {})
            it = iter(requests)
            while True:
                chunk = list(islice(it, engine.settings.batch_max_requests))
                if not chunk:
                    break
                pending: dict[str, list[Prepared]] = {}
                for request in chunk:
                    try:
                        prep = prepare(engine.endpoints, request, engine.settings)
                    except ValueError as exc:
                        st = engine.stats
                        st.results += 1
                        st.failed += 1
                        r = _chat_result(request, status="failed", error=str(exc))
                        yield (r, None) if self.raw else r
                        continue
                    key = prep.keys[self.i]
                    if key in pending:
                        pending[key].append(prep)
                        continue
                    hit = cache.get(key)
                    if hit is not None:
                        engine.stats.cached += 1
                        self.snap.cached += 1
                        yield self._emit(prep, key, cached=True)
                        continue
                    pending[key] = [prep]
                yield from self._settle(pending)
        finally:
            self.progress.close(self.snap)
        if self.budget.stopped:
            b = self.budget
            raise BudgetExceeded(
                f"budget reached: spent ${b.spent:.4f} of --max-cost ${b.max_cost:g}; "
                f"{b.stopped} request(s) not sent",
                hint="rerun with a higher --max-cost to continue; finished work is cached",
            )

    def _settle(self, pending: dict[str, list[Prepared]]) -> Iterator[Any]:
        cache = self.engine.cache
        requests = {k: v[0].request for k, v in pending.items()}
        while pending:
            fresh: list[Prepared] = []
            for key, preps in list(pending.items()):
                if cache.batch_of(key) is not None:
                    continue
                n = self.resubmits.get(key, 0)
                if n > MAX_RESUBMITS:
                    self.failures[key] = f"batch expired {n} times without answering this item"
                    continue
                self.resubmits[key] = n + 1
                worst = self._worst(preps[0])
                if not self.budget.fits(worst):
                    self.budget.stopped += len(preps)
                    del pending[key]
                    continue
                self.budget.reserve(key, worst)
                fresh.append(preps[0])
            if fresh:
                self._submit(fresh)
            self.snap.in_flight = len(pending)
            batch_ids = {cache.batch_of(k) for k in pending} - {None}
            for batch_id in sorted(batch_ids):  # type: ignore[arg-type]
                self._ingest(batch_id, requests)  # type: ignore[arg-type]
            for key in list(pending):
                if cache.contains(key) or key in self.failures:
                    for prep in pending.pop(key):
                        yield self._emit(prep, key)
            self.snap.in_flight = len(pending)
            self.progress.update(self.snap)


def run_batch(
    engine: Any, requests: Iterable[ChatRequest], *, max_cost: float | None, raw: bool
) -> Iterator[tuple[ChatResult, Any]]:
    """Run ``requests`` through the Batch API (see the module docstring). Yields
    ``(result, response bodies)`` pairs (bodies None unless ``raw``)."""
    run = _BatchRun(engine, max_cost, raw)
    for item in run.run(requests):
        yield item if raw else (item, None)
