"""A loopback fake of an OpenAI-compatible server, for tests and benchmarks.

    from tests.support.fake_openai_server import FakeOpenAIServer
    with FakeOpenAIServer(responder=lambda body: "hello", faults=["429", None, "500"]) as srv:
        settings = LLMSettings(base_url=srv.base_url, model="fake-model")
        ...
        assert srv.count("chat") == 4

It speaks ``GET /v1/models``, ``POST /v1/chat/completions`` (plain and streamed),
``POST /v1/embeddings`` (deterministic bag-of-words vectors) and the
Batch API (``POST /v1/files``, ``GET /v1/files/{id}/content``, ``POST /v1/batches``,
``GET /v1/batches/{id}``), records every request, counts HTTP calls, tracks peak
concurrency, and injects faults into chat completions:

``faults`` is a list applied to successive chat requests (index i gets ``faults[i]``; None
or past the end: no fault) or a function ``(index, body) -> fault``. A fault is a ``Fault``
or one of these strings: ``"429"`` (Retry-After: ``retry_after``), ``"quota"`` (429
insufficient_quota), ``"500"``, ``"503"``, ``"400"``, ``"401"``, ``"404"``, ``"hang"``
(never answers), ``"reset"`` (connection closed with no answer), ``"malformed"`` (200 with
broken JSON), ``"truncate"`` (the body or stream is cut mid-way), ``"length"`` (a reply cut
at finish_reason=length), ``"slow"`` (adds ``Fault.delay`` seconds).

``max_inflight`` makes it a concurrency-limited server: a request arriving while that many
are in flight gets 429 at once, with ``Retry-After``. ``rpm`` / ``tpm`` make it a rate-limited
one (requests / tokens per minute as token buckets of one second's worth, replenished
continuously, as OpenAI enforces them; tokens counted as prompt bytes / 4 + max_tokens): over
the limit, 429 at once; with ``ratelimit_headers`` every chat answer carries
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (announcing ``announce_share`` of
the limits it enforces). ``latency`` delays every chat
answer. ``sporadic_429(p)`` and ``fault_mix(...)`` build seeded fault functions (429s that do
not depend on the load; the mix of the engine's benchmark). Every 429 sent is
counted in ``count("429")``.

Fixtures for other test modules (import them in conftest.py or a test module):
``fake_openai`` (a running server) and ``fake_openai_factory`` (start several).

Run it as a separate process (benchmarks):
``python tests/support/fake_openai_server.py --latency 1 [--max-inflight 64] [--sporadic-429
0.05] [--fault-mix] [--rpm N --ratelimit-headers]`` prints ``PORT <n>`` and serves until stdin
closes or it gets SIGTERM; ``GET /v1/_stats`` answers its counters as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

try:  # the fixtures are optional when this file runs as a script
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]


@dataclass
class Fault:
    """A fault to inject into one chat completion."""

    kind: str
    retry_after: float | None = 0.05
    delay: float = 0.0
    status: int | None = None
    at_once: bool = False  # answer before the latency (a gateway refusing at the door)


@dataclass
class FakeReply:
    """A responder's reply with control over finish_reason and usage."""

    content: str
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning: str | None = None  # sent as message.reasoning_content (DeepSeek/vLLM style)


FaultSpec = Fault | str | None
Responder = Callable[[dict[str, Any]], Any]


def example_for_schema(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> Any:
    """A small instance that satisfies a simple JSON schema (for default replies)."""
    defs = defs if defs is not None else schema.get("$defs", schema.get("definitions", {}))
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return example_for_schema(defs.get(name, {}), defs)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for combo in ("anyOf", "oneOf", "allOf"):
        if combo in schema and schema[combo]:
            return example_for_schema(schema[combo][0], defs)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        required = schema.get("required", list(props))
        return {k: example_for_schema(props[k], defs) for k in required if k in props}
    if kind == "array":
        n = max(1, int(schema.get("minItems", 1)))
        return [example_for_schema(schema.get("items", {"type": "string"}), defs) for _ in range(n)]
    if kind == "string":
        return "x" * max(1, int(schema.get("minLength", 1)))
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.0))
    if kind == "boolean":
        return True
    return None


def default_responder(body: dict[str, Any]) -> Any:
    """Deterministic replies: schema requests get a valid instance, others an echo."""
    rf = body.get("response_format") or {}
    schema = None
    if rf.get("type") == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
    elif rf.get("type") == "json_object":
        schema = rf.get("schema")
    if schema is not None:
        return json.dumps(example_for_schema(schema))
    last = ""
    for m in body.get("messages", []):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            last = m["content"]
    return f"Echo: {last[:200]} (seed={body.get('seed')})"


def _words(text: str) -> int:
    return max(1, len(text.split()))


def sporadic_429(p: float, *, retry_after: float = 1.0, seed: int = 0):
    """Faults: a share ``p`` of chat requests gets 429 at once (``Retry-After``), whatever
    the load, as behind some proxies and shared gateways. Seeded, so runs repeat."""
    rng = random.Random(seed)

    def fault(index: int, body: dict[str, Any]) -> Fault | None:
        if rng.random() < p:
            return Fault("429", retry_after=retry_after, at_once=True)
        return None

    return fault


def fault_mix(
    *,
    p429: float = 0.05,
    p500: float = 0.05,
    reset: float = 0.01,
    malformed: float = 0.01,
    hang: float = 0.004,
    hang_s: float = 20.0,
    retry_after: float = 1.0,
    seed: int = 0,
):
    """Faults: the mix of issue 18 (5% 429 with Retry-After, 5% 500, 1% connection resets,
    1% malformed bodies, 0.4% answers that hang ``hang_s`` seconds). Seeded."""
    rng = random.Random(seed)

    def fault(index: int, body: dict[str, Any]) -> Fault | None:
        x = rng.random()
        for p, f in (
            (p429, Fault("429", retry_after=retry_after)),
            (p500, Fault("500")),
            (reset, Fault("reset")),
            (malformed, Fault("malformed")),
            (hang, Fault("slow", delay=hang_s)),
        ):
            if x < p:
                return f
            x -= p
        return None

    return fault


class _RateWindow:
    """A per-minute limit as a token bucket holding one second's worth (``limit / 60``),
    replenished continuously, as OpenAI enforces its limits."""

    def __init__(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.t = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    def take(self, amount: float) -> bool:
        self._refill()
        if self.level < min(amount, self.capacity):
            return False
        self.level -= amount
        return True

    def refund(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)

    def wait_s(self, amount: float) -> float:
        return max(0.0, (min(amount, self.capacity) - self.level) / self.rate)

    def headers(self, name: str, share: float = 1.0) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers of this limit, announcing ``share`` of it."""
        self._refill()
        full_in = (self.capacity - self.level) / self.rate
        remaining = min(self.level, self.capacity * share)
        return {
            f"x-ratelimit-limit-{name}": f"{self.per_minute * share:g}",
            f"x-ratelimit-remaining-{name}": f"{max(0, int(remaining))}",
            f"x-ratelimit-reset-{name}": f"{max(0.001, full_in):.3f}s",
        }


class FakeOpenAIServer:
    """The fake server, running on 127.0.0.1 in a background thread (see module docstring).

    Attributes may be changed while it runs (``responder``, ``faults``, ``latency``,
    ``max_inflight``, ``api_key``, ``batch_delay``, ``batch_expire``).
    """

    def __init__(
        self,
        responder: Responder | None = None,
        faults: Sequence[FaultSpec] | Callable[[int, dict[str, Any]], FaultSpec] | None = None,
        *,
        latency: float = 0.0,
        model: str = "fake-model",
        api_key: str | None = None,
        max_inflight: int | None = None,
        retry_after: float = 0.05,
        rpm: float | None = None,
        tpm: float | None = None,
        ratelimit_headers: bool = False,
        announce_share: float = 1.0,
        record: bool = True,
        batch_delay: float = 0.0,
        batch_expire: int = 0,
        port: int = 0,
        use_uvloop: bool = False,
    ) -> None:
        self.use_uvloop = use_uvloop
        self.responder = responder or default_responder
        self.faults = faults
        self.latency = latency
        self.model = model
        self.api_key = api_key
        self.max_inflight = max_inflight
        self.retry_after = retry_after
        self.rpm = _RateWindow(rpm) if rpm else None
        self.tpm = _RateWindow(tpm) if tpm else None
        self.ratelimit_headers = ratelimit_headers
        # the share of its real limits the headers announce: tests announce less than they
        # enforce, so that arrivals bunched by a loaded machine's scheduler are not refused
        self.announce_share = announce_share
        self.record = record
        self.batch_delay = batch_delay
        self.batch_expire = batch_expire  # items left out of the first batch, which "expires"
        self._port = port
        self.requests: list[dict[str, Any]] = []  # chat bodies, in arrival order
        self.chat_headers: list[dict[str, str]] = []  # each chat body's headers, beside it
        self.arrivals: list[float] = []  # time.monotonic() of each chat request
        self.headers: list[dict[str, str]] = []  # headers of every request
        self.counts: Counter[str] = Counter()  # "chat", "models", "files", "batches", ...
        self.inflight = 0
        self.peak_inflight = 0
        self.chat_index = 0
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._expired_once = False
        self._presented = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self.port: int | None = None

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            loop = self._new_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._cleanup())
            loop.close()

        self._thread = threading.Thread(target=main, name="fake-openai", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        if self.use_uvloop:
            try:
                import uvloop

                return uvloop.new_event_loop()
            except ImportError:
                pass
        return asyncio.new_event_loop()

    async def _start(self) -> None:
        self._stopping = asyncio.Event()
        app = self.make_app()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port, backlog=4096)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.port = sock.getsockname()[1]

    async def _cleanup(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)
            self._loop = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection ----------------------------------------------------------------------
    def count(self, what: str = "chat") -> int:
        """HTTP calls received of one kind ("chat", "models", "files", "batches", "all")."""
        if what == "all":
            return sum(self.counts.values())
        return self.counts[what]

    def reset_counts(self) -> None:
        self.counts.clear()
        self.requests.clear()
        self.chat_headers.clear()
        self.arrivals.clear()
        self.headers.clear()
        self.chat_index = 0
        self.peak_inflight = 0

    # -- embeddings --------------------------------------------------------------------
    embedding_faults: list[str | None] | None = None  # per /v1/embeddings call: "500", ...

    @staticmethod
    def embedding_for(text: str, dim: int = 64) -> list[float]:
        """A deterministic bag-of-words vector: texts sharing words point the same way."""
        import hashlib

        vec = [0.0] * dim
        for word in text.lower().split():
            h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big")
            vec[h % dim] += 1.0
        return vec

    async def _embeddings(self, request: web.Request) -> web.Response:
        index = self.counts["embeddings"]
        self.counts["embeddings"] += 1
        if not self._authorized(request):
            return self._unauthorized()
        body = json.loads(await request.read())
        faults = self.embedding_faults or []
        if index < len(faults) and faults[index]:
            return self._error(int(faults[index]), f"injected {faults[index]}")
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
        dim = int(body.get("dimensions") or 64)
        data = [
            {"object": "embedding", "index": i, "embedding": self.embedding_for(t, dim)}
            for i, t in enumerate(inputs)
        ]
        tokens = sum(_words(t) for t in inputs)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model") or self.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    # -- app -----------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/_stats", self._stats)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{file_id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._create_batch)
        app.router.add_get("/v1/batches/{batch_id}", self._get_batch)
        return app

    def _authorized(self, request: web.Request) -> bool:
        if self.record:
            self.headers.append(dict(request.headers))
        if self.api_key is None:
            return True
        presented = request.headers.get("Authorization", "")
        self._presented = presented.removeprefix("Bearer ")
        return presented == f"Bearer {self.api_key}"

    @staticmethod
    def _error(status: int, message: str, code: str | None = None, **headers: str):
        body = {"error": {"message": message, "type": "fake_error", "code": code}}
        return web.json_response(body, status=status, headers=headers or None)

    def _unauthorized(self) -> web.Response:
        # like some servers, it quotes the key it got: the engine must not repeat it
        return self._error(
            401, f"Incorrect API key provided: {self._presented}.", "invalid_api_key"
        )

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({"counts": dict(self.counts), "peak_inflight": self.peak_inflight})

    def _rate_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.ratelimit_headers:
            if self.rpm is not None:
                headers.update(self.rpm.headers("requests", self.announce_share))
            if self.tpm is not None:
                headers.update(self.tpm.headers("tokens", self.announce_share))
        return headers

    def _over_rate(self, raw: bytes, body: dict[str, Any]) -> web.Response | None:
        """429 when the request would pass ``rpm`` or ``tpm`` (None: it may go)."""
        tokens = len(raw) / 4 + int(body.get("max_tokens") or 0)
        ok = self.rpm is None or self.rpm.take(1.0)
        if ok and self.tpm is not None and not self.tpm.take(tokens):
            ok = False
            if self.rpm is not None:
                self.rpm.refund(1.0)
        if ok:
            return None
        self.counts["429"] += 1
        wait = max(
            self.rpm.wait_s(1.0) if self.rpm is not None else 0.0,
            self.tpm.wait_s(tokens) if self.tpm is not None else 0.0,
        )
        return self._error(
            429,
            "Rate limit reached",
            "rate_limit_exceeded",
            **{"Retry-After": f"{wait:.3f}", **self._rate_headers()},
        )

    async def _models(self, request: web.Request) -> web.Response:
        self.counts["models"] += 1
        if not self._authorized(request):
            return self._unauthorized()
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "fake"}]}
        )

    def _fault_for(self, index: int, body: dict[str, Any]) -> Fault | None:
        spec: FaultSpec
        if self.faults is None:
            return None
        if callable(self.faults):
            spec = self.faults(index, body)
        else:
            spec = self.faults[index] if index < len(self.faults) else None
        if spec is None:
            return None
        if isinstance(spec, Fault):
            return spec
        return Fault(str(spec), retry_after=self.retry_after)

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """The full chat-completion body the responder gives for ``body``."""
        reply = self.responder(body)
        if isinstance(reply, dict) and "choices" in reply:
            return reply
        if isinstance(reply, dict | list):
            reply = json.dumps(reply)
        if not isinstance(reply, FakeReply):
            reply = FakeReply(str(reply))
        prompt = sum(
            _words(m["content"])
            for m in body.get("messages", [])
            if isinstance(m.get("content"), str)
        )
        pt = reply.prompt_tokens if reply.prompt_tokens is not None else prompt
        ct = (
            reply.completion_tokens
            if reply.completion_tokens is not None
            else _words(reply.content)
        )
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.reasoning is not None:
            message["reasoning_content"] = reply.reasoning
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
        }

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.counts["chat"] += 1
        if self.record:
            self.arrivals.append(time.monotonic())
        index = self.chat_index
        self.chat_index += 1
        self.inflight += 1
        self.peak_inflight = max(self.peak_inflight, self.inflight)
        try:
            if not self._authorized(request):
                return self._unauthorized()
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                return self._error(400, "could not parse the JSON body")
            if self.record:
                self.requests.append(body)
                self.chat_headers.append(dict(request.headers))
            if self.max_inflight is not None and self.inflight > self.max_inflight:
                self.counts["429"] += 1
                return self._error(
                    429,
                    "Rate limit reached for requests",
                    "rate_limit_exceeded",
                    **{"Retry-After": f"{self.retry_after:g}"},
                )
            if self.rpm is not None or self.tpm is not None:
                refused = self._over_rate(raw, body)
                if refused is not None:
                    return refused
            fault = self._fault_for(index, body)
            if fault is not None and fault.at_once:
                response = await self._inject(request, body, fault)
                if response is not None:
                    return response
            latency = self.latency(body) if callable(self.latency) else self.latency
            if fault is not None and fault.kind == "slow":
                latency += fault.delay
            if latency:
                await asyncio.sleep(latency)
            if fault is not None:
                response = await self._inject(request, body, fault)
                if response is not None:
                    return response
            return await self._answer(request, body)
        finally:
            self.inflight -= 1

    async def _inject(
        self, request: web.Request, body: dict[str, Any], fault: Fault
    ) -> web.StreamResponse | None:
        kind = fault.kind
        if kind in ("429", "500", "503", "400", "401", "404", "408", "409", "502"):
            status = int(kind)
            headers = {}
            if status == 429:
                self.counts["429"] += 1
            if status == 429 and fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            return self._error(status, f"injected {status}", None, **headers)
        if kind == "quota":
            self.counts["429"] += 1
            return self._error(
                429,
                "You exceeded your current quota, please check your plan.",
                "insufficient_quota",
            )
        if kind == "hang":
            assert self._stopping is not None
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=60)
            except TimeoutError:
                pass
            return self._error(504, "hung")
        if kind == "reset":
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=200)
        if kind == "malformed":
            return web.Response(
                body=b'{"choices": [{"index": 0, "mess', content_type="application/json"
            )
        if kind == "truncate":
            return await self._answer(request, body, truncate=True)
        if kind == "length":
            completion = self.completion(body)
            choice = completion["choices"][0]
            text = choice["message"]["content"] or ""
            choice["message"]["content"] = text[: max(1, len(text) // 2)]
            choice["finish_reason"] = "length"
            return await self._send(request, body, completion)
        if kind == "slow":
            return None
        raise ValueError(f"unknown fault kind {kind!r}")

    async def _answer(
        self, request: web.Request, body: dict[str, Any], truncate: bool = False
    ) -> web.StreamResponse:
        return await self._send(request, body, self.completion(body), truncate=truncate)

    async def _send(
        self,
        request: web.Request,
        body: dict[str, Any],
        completion: dict[str, Any],
        truncate: bool = False,
    ) -> web.StreamResponse:
        if body.get("stream"):
            return await self._stream(request, body, completion, truncate)
        data = json.dumps(completion).encode()
        if not truncate:
            return web.Response(
                body=data,
                content_type="application/json",
                headers=self._rate_headers() or None,
            )
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        if request.transport is not None:
            request.transport.abort()
        return resp

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        completion: dict[str, Any],
        truncate: bool,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        choice = completion["choices"][0]
        text = choice["message"]["content"] or ""
        base = {
            "id": completion["id"],
            "object": "chat.completion.chunk",
            "created": completion["created"],
            "model": completion["model"],
        }
        pieces = [text[i : i + 16] for i in range(0, len(text), 16)] or [""]
        if truncate:
            pieces = pieces[: max(1, len(pieces) // 2)]
        thinking = choice["message"].get("reasoning_content") or ""
        for i in range(0, len(thinking), 16):
            delta = {"reasoning_content": thinking[i : i + 16]}
            chunk = dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": None}])
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        for piece in pieces:
            chunk = dict(
                base, choices=[{"index": 0, "delta": {"content": piece}, "finish_reason": None}]
            )
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if truncate:
            if request.transport is not None:
                request.transport.abort()
            return resp
        final = dict(
            base, choices=[{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]
        )
        await resp.write(f"data: {json.dumps(final)}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = dict(base, choices=[], usage=completion["usage"])
            await resp.write(f"data: {json.dumps(usage)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # -- Batch API -----------------------------------------------------------------------
    async def _upload(self, request: web.Request) -> web.Response:
        self.counts["files"] += 1
        if not self._authorized(request):
            return self._unauthorized()
        reader = await request.multipart()
        purpose = None
        content = b""
        filename = "upload.jsonl"
        async for part in reader:
            if part.name == "purpose":
                purpose = (await part.read()).decode()
            elif part.name == "file":
                filename = part.filename or filename
                content = bytes(await part.read())
        if purpose != "batch":
            return self._error(400, "purpose must be 'batch'")
        file_id = f"file-{uuid.uuid4().hex[:16]}"
        self.files[file_id] = content
        return web.json_response(
            {
                "id": file_id,
                "object": "file",
                "bytes": len(content),
                "filename": filename,
                "purpose": "batch",
                "created_at": int(time.time()),
            }
        )

    async def _file_content(self, request: web.Request) -> web.Response:
        self.counts["file_content"] += 1
        if not self._authorized(request):
            return self._unauthorized()
        file_id = request.match_info["file_id"]
        if file_id not in self.files:
            return self._error(404, f"no file {file_id}")
        return web.Response(body=self.files[file_id], content_type="application/octet-stream")

    async def _create_batch(self, request: web.Request) -> web.Response:
        self.counts["batches"] += 1
        if not self._authorized(request):
            return self._unauthorized()
        data = await request.json()
        file_id = data.get("input_file_id")
        if file_id not in self.files:
            return self._error(400, f"no file {file_id}")
        if data.get("endpoint") != "/v1/chat/completions":
            return self._error(400, "endpoint must be /v1/chat/completions")
        batch_id = f"batch_{uuid.uuid4().hex[:16]}"
        batch = {
            "id": batch_id,
            "object": "batch",
            "endpoint": data["endpoint"],
            "input_file_id": file_id,
            "completion_window": data.get("completion_window", "24h"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(time.time()),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "_ready_at": time.monotonic() + self.batch_delay,
        }
        self.batches[batch_id] = batch
        return web.json_response({k: v for k, v in batch.items() if not k.startswith("_")})

    def _finish_batch(self, batch: dict[str, Any]) -> None:
        lines = self.files[batch["input_file_id"]].decode().splitlines()
        outputs, errors = [], []
        expire = 0
        if self.batch_expire and not self._expired_once:
            expire = min(self.batch_expire, len(lines))
            self._expired_once = True
        kept = lines[: len(lines) - expire] if expire else lines
        for i, line in enumerate(kept):
            item = json.loads(line)
            body = item["body"]
            fault = self._fault_for(i, body)
            if fault is not None and fault.kind in ("400", "500"):
                errors.append(
                    {
                        "id": f"batch_req_{uuid.uuid4().hex[:12]}",
                        "custom_id": item["custom_id"],
                        "response": {
                            "status_code": int(fault.kind),
                            "request_id": uuid.uuid4().hex,
                            "body": {"error": {"message": f"injected {fault.kind}"}},
                        },
                        "error": None,
                    }
                )
                continue
            completion = self.completion(body)
            if fault is not None and fault.kind == "length":
                completion["choices"][0]["finish_reason"] = "length"
            outputs.append(
                {
                    "id": f"batch_req_{uuid.uuid4().hex[:12]}",
                    "custom_id": item["custom_id"],
                    "response": {
                        "status_code": 200,
                        "request_id": uuid.uuid4().hex,
                        "body": completion,
                    },
                    "error": None,
                }
            )
        out_id = f"file-{uuid.uuid4().hex[:16]}"
        self.files[out_id] = "".join(json.dumps(o) + "\n" for o in outputs).encode()
        batch["output_file_id"] = out_id
        if errors:
            err_id = f"file-{uuid.uuid4().hex[:16]}"
            self.files[err_id] = "".join(json.dumps(o) + "\n" for o in errors).encode()
            batch["error_file_id"] = err_id
        batch["status"] = "expired" if expire else "completed"
        batch["request_counts"] = {
            "total": len(lines),
            "completed": len(outputs),
            "failed": len(errors),
        }

    async def _get_batch(self, request: web.Request) -> web.Response:
        self.counts["batch_status"] += 1
        if not self._authorized(request):
            return self._unauthorized()
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return self._error(404, "no such batch")
        if batch["status"] in ("validating", "in_progress"):
            if time.monotonic() >= batch["_ready_at"]:
                self._finish_batch(batch)
            else:
                batch["status"] = "in_progress"
        return web.json_response({k: v for k, v in batch.items() if not k.startswith("_")})


# -- pytest fixtures ----------------------------------------------------------------------------
if pytest is not None:

    @pytest.fixture
    def fake_openai() -> Iterator[FakeOpenAIServer]:
        """A running fake server with default replies; reconfigure its attributes freely."""
        with FakeOpenAIServer() as srv:
            yield srv

    @pytest.fixture
    def fake_openai_factory() -> Iterator[Callable[..., FakeOpenAIServer]]:
        """``make(**kwargs)`` starts a FakeOpenAIServer; all are stopped after the test."""
        servers: list[FakeOpenAIServer] = []

        def make(**kwargs: Any) -> FakeOpenAIServer:
            srv = FakeOpenAIServer(**kwargs).start()
            servers.append(srv)
            return srv

        yield make
        for srv in servers:
            srv.stop()


# -- as a separate process ------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the fake OpenAI API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--reply-words", type=int, default=50)
    parser.add_argument("--max-inflight", type=int, default=None)
    parser.add_argument("--retry-after", type=float, default=1.0)
    parser.add_argument("--sporadic-429", type=float, default=0.0)
    parser.add_argument("--fault-mix", action="store_true")
    parser.add_argument("--hang-s", type=float, default=20.0)
    parser.add_argument("--rpm", type=float, default=None)
    parser.add_argument("--tpm", type=float, default=None)
    parser.add_argument("--ratelimit-headers", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    faults = None
    if args.fault_mix:
        faults = fault_mix(retry_after=args.retry_after, hang_s=args.hang_s, seed=args.seed)
    elif args.sporadic_429:
        faults = sporadic_429(args.sporadic_429, retry_after=args.retry_after, seed=args.seed)
    text = " ".join(["word"] * args.reply_words)
    srv = FakeOpenAIServer(
        responder=lambda body: FakeReply(
            text, prompt_tokens=20, completion_tokens=args.reply_words
        ),
        latency=args.latency,
        record=False,
        port=args.port,
        use_uvloop=True,
        faults=faults,
        max_inflight=args.max_inflight,
        retry_after=args.retry_after,
        rpm=args.rpm,
        tpm=args.tpm,
        ratelimit_headers=args.ratelimit_headers,
    )
    srv.start()
    print(f"PORT {srv.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    stop.wait()
    srv.stop()


if __name__ == "__main__":
    main()
