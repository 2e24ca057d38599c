"""HTTP for one endpoint: raw aiohttp speaking the OpenAI wire format.

Why not ``AsyncOpenAI``: measured on this 2-core machine (bench/RESULTS.md), its default httpx
transport costs ~3 ms of client CPU per request and reaches ~68% of ideal throughput at 256
concurrent 1 s requests; its aiohttp transport halves that. A plain ``aiohttp.ClientSession``
(C HTTP parser, keep-alive, one connection pool per endpoint sized to its concurrency) costs a
fraction of a millisecond, which is what lets one process keep a thousand requests in flight.
The wire format is small and stable (``POST /chat/completions``, ``/files``, ``/batches``), and
the engine does its own retries, so nothing of the SDK is missing.

Every failed attempt becomes an ``AttemptError`` whose ``kind`` tells the engine what to do:
``retry`` (408/409/429/5xx, timeouts, resets, malformed or truncated bodies), ``request``
(this request is bad: 400/413/422/...; record it and go on), ``auth`` (401/403), ``quota``
(402, or 429 ``insufficient_quota``) and ``endpoint`` (404: wrong URL or model). The last three
stop the run with one clear message. Messages never contain the API key.

``[llm] transport`` picks the class per endpoint from the registry in
``builder.llm.transports`` (``make_transport``): ``http`` (the default: the lean HTTP/1.1 client
of ``builder.llm.transport_http`` for plain-http chat completions, this class for the rest),
``aiohttp`` (this module), ``openai`` (the official ``openai.AsyncOpenAI`` client,
``builder.llm.transport_openai``) or ``azure`` (``openai.AsyncAzureOpenAI``). All share the
``chat``/``request_json``/``close`` interface, the ``Reply`` they return and the
``AttemptError`` classification, so the engine's retries, window and fail-fast do not depend on
the choice; the cache key does not either (it hashes the body, which is the same).
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Any

import aiohttp

from builder.llm.endpoint import Endpoint
from builder.llm.window import RateLimitInfo, parse_ratelimit
from builder.settings.llm import LLMSettings

USER_AGENT = "curriculum-corpus-builder/0.1"
_MAX_ERROR_BODY = 64 * 1024
_LOOPBACK = ("127.", "localhost", "[::1]")


class AttemptError(Exception):
    """One failed attempt and what it means (see the module docstring for ``kind``)."""

    def __init__(
        self,
        kind: str,
        reason: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        ratelimit: RateLimitInfo | None = None,
    ) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.ratelimit = ratelimit  # the answer's x-ratelimit-* headers, if any

    @property
    def overload(self) -> bool:
        """The server asked us to slow down (a signal for the concurrency window)."""
        return self.status == 429


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_details(text: str) -> tuple[str, str]:
    """(message, code) from an OpenAI-style or FastAPI-style error body."""
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:300], ""
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or json.dumps(err)[:300]
            code = str(err.get("code") or err.get("type") or "")
            return str(msg)[:500], code
        if isinstance(err, str):
            return err[:500], ""
        if "detail" in data:
            return json.dumps(data["detail"])[:500], ""
    return text.strip()[:300], ""


def classify_status(status: int, message: str, code: str, retry_after: float | None, label: str):
    """The ``AttemptError`` for a non-200 answer."""
    detail = f"HTTP {status}" + (f": {message}" if message else "")
    if status in (401, 403):
        return AttemptError(
            "auth",
            f"{label} rejected the credentials ({detail})",
            status=status,
        )
    if status == 402 or (status == 429 and "insufficient_quota" in code):
        return AttemptError(
            "quota", f"{label} says the account is out of quota ({detail})", status=status
        )
    if status in (408, 409, 429) or status >= 500:
        return AttemptError("retry", detail, status=status, retry_after=retry_after)
    if status == 404:
        return AttemptError(
            "endpoint",
            f"{label} has no such URL or model ({detail})",
            status=status,
        )
    return AttemptError("request", detail, status=status)


def status_error(ep: Endpoint, status: int, text: str, headers: Any) -> AttemptError:
    """The ``AttemptError`` for a non-200 answer whose body starts with ``text``: the error's
    message (redacted) and code from its JSON, classified by status, with ``Retry-After``.
    Every transport reports an HTTP error through here."""
    message, code = _error_details(text)
    return classify_status(status, ep.redact(message), code, parse_retry_after(headers), ep.label)


def decode_json_reply(raw: bytes) -> tuple[str, Any]:
    """``(text, body)`` of a JSON response; ``AttemptError`` (retry) when it is not JSON."""
    try:
        text = raw.decode("utf-8")
        return text, json.loads(text)
    except ValueError:
        raise AttemptError("retry", f"malformed JSON in the response ({len(raw)} bytes)") from None


def check_completion(body: Any) -> None:
    """Raise ``AttemptError('retry')`` unless ``body`` looks like a chat completion."""
    if not isinstance(body, dict):
        raise AttemptError("retry", "malformed response: not a JSON object")
    if "error" in body and not body.get("choices"):
        message, _ = _error_details(json.dumps(body))
        raise AttemptError("retry", f"error in a 200 response: {message}")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise AttemptError("retry", "malformed response: no choices")
    if not isinstance(choices[0].get("message"), dict):
        raise AttemptError("retry", "malformed response: choice without a message")


@dataclass
class Reply:
    """A successful chat completion: the full response body and how long it took."""

    body: dict[str, Any]
    latency_s: float
    raw: str | None = None  # the body as received (None when assembled from a stream)
    ratelimit: RateLimitInfo | None = None  # the answer's x-ratelimit-* headers, if any


class Transport:
    """An aiohttp session for one endpoint, bound to the event loop that opened it."""

    def __init__(self, ep: Endpoint, settings: LLMSettings) -> None:
        self.ep = ep
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, **self.ep.headers, "Content-Type": "application/json"}
        if self.ep.api_key:
            headers["Authorization"] = f"Bearer {self.ep.api_key}"
        return headers

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            host = self.ep.base_url.split("://", 1)[-1]
            connector = aiohttp.TCPConnector(
                limit=self.ep.max_concurrency + 4,  # + a few for batch/check calls
                limit_per_host=0,
                ttl_dns_cache=300,
                keepalive_timeout=30,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=None,
                    sock_connect=self.settings.connect_timeout_s,
                    sock_read=self.settings.read_timeout_s,
                ),
                # proxies from the environment, except for loopback servers
                trust_env=not host.startswith(_LOOPBACK),
                auto_decompress=True,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def url(self, path: str) -> str:
        return f"{self.ep.base_url}/{path.lstrip('/')}"

    # -- chat completions --------------------------------------------------------------
    async def chat(self, data: bytes, *, stream: bool = False) -> Reply:
        """POST one chat completion. Raises ``AttemptError`` for anything but a good answer."""
        t0 = time.perf_counter()
        try:
            async with self.session.post(self.url("chat/completions"), data=data) as resp:
                ratelimit = parse_ratelimit(resp.headers)
                if resp.status != 200:
                    err = await self._status_error(resp)
                    err.ratelimit = ratelimit
                    raise err
                raw_text = None
                if stream:
                    body = await assemble_stream(resp.content)
                else:
                    raw_text, body = decode_json_reply(await resp.read())
        except AttemptError:
            raise
        except aiohttp.ClientPayloadError as exc:
            raise AttemptError("retry", f"truncated response ({exc.__class__.__name__})") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._attempt_error(exc, "the server") from None
        check_completion(body)
        return Reply(body, time.perf_counter() - t0, raw_text, ratelimit)

    def _attempt_error(self, exc: BaseException, waiting_for: str) -> AttemptError:
        """The retryable ``AttemptError`` for a timeout, connection or other client error."""
        if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
            return AttemptError("retry", f"timed out waiting for {waiting_for}")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return AttemptError(
                "retry", f"cannot connect to {self.ep.label} ({exc.strerror or exc})"
            )
        return AttemptError("retry", f"connection error ({exc.__class__.__name__}: {exc})")

    async def _status_error(self, resp: aiohttp.ClientResponse) -> AttemptError:
        try:
            text = (await resp.content.read(_MAX_ERROR_BODY)).decode("utf-8", "replace")
        except (TimeoutError, aiohttp.ClientError):
            text = ""
        return status_error(self.ep, resp.status, text, resp.headers)

    # -- small JSON calls (models, files, batches) -------------------------------------
    async def request_json(
        self, method: str, path: str, *, json_body: Any = None, data: Any = None
    ) -> Any:
        """One non-chat API call; raises ``AttemptError`` like ``chat``."""
        headers = None
        if isinstance(data, aiohttp.FormData):  # the session's JSON content type must not win
            data = data()
            headers = {"Content-Type": data.content_type}
        try:
            async with self.session.request(
                method, self.url(path), json=json_body, data=data, headers=headers
            ) as resp:
                if resp.status not in (200, 201):
                    raise await self._status_error(resp)
                raw = await resp.read()
        except AttemptError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._attempt_error(exc, self.ep.label) from None
        if path.endswith("/content"):
            return raw
        try:
            return json.loads(raw)
        except ValueError:
            raise AttemptError("retry", f"malformed JSON from {path}") from None


async def assemble_stream(lines: AsyncIterable[bytes] | AsyncIterable[str]) -> dict[str, Any]:
    """Assemble a server-sent-events stream (its lines, bytes or str) into a non-streaming
    completion body.

    A stream that ends without ``[DONE]`` or without a ``finish_reason`` was cut (a llama.cpp
    server with ``--interrupt_requests True`` does this silently): that is a retry, not text.
    """
    parts: list[str] = []
    thinking: list[str] = []  # reasoning_content deltas (DeepSeek, vLLM reasoning parsers)
    finish_reason = None
    usage = None
    meta: dict[str, Any] = {}
    done = False
    async for raw_line in lines:
        line = (raw_line.encode() if isinstance(raw_line, str) else raw_line).strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            done = True
            break
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise AttemptError("retry", "malformed JSON in the response stream") from None
        if not isinstance(chunk, dict):
            raise AttemptError("retry", "malformed chunk in the response stream")
        if "error" in chunk:
            message, _ = _error_details(json.dumps(chunk))
            raise AttemptError("retry", f"error in the response stream: {message}")
        for k in ("id", "created", "model", "system_fingerprint"):
            if k in chunk and k not in meta:
                meta[k] = chunk[k]
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                parts.append(delta["content"])
            for name in ("reasoning_content", "reasoning"):
                if isinstance(delta.get(name), str):
                    thinking.append(delta[name])
                    break
            if choice.get("finish_reason"):
                finish_reason = choice["finish_reason"]
    if not done or finish_reason is None:
        raise AttemptError("retry", "truncated response stream (no finish_reason or [DONE])")
    body: dict[str, Any] = {
        "id": meta.get("id", ""),
        "object": "chat.completion",
        "created": meta.get("created", 0),
        "model": meta.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(parts)},
                "finish_reason": finish_reason,
            }
        ],
    }
    if thinking:
        body["choices"][0]["message"]["reasoning_content"] = "".join(thinking)
    if usage is not None:
        body["usage"] = usage
    if "system_fingerprint" in meta:
        body["system_fingerprint"] = meta["system_fingerprint"]
    return body
