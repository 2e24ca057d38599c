"""Transports that go through the official ``openai`` client (``[llm] transport = "openai"``
or ``"azure"``).

Same interface and meaning as ``builder.llm.transport.Transport``: ``chat(body_bytes,
stream=...) -> Reply`` with the full response body, and every failure an ``AttemptError`` of
the same ``kind`` (``classify_status`` for HTTP errors; timeouts, resets, truncated or
malformed bodies are ``retry``), so the engine's retries, Retry-After, window and fail-fast
behave the same. What the SDK adds: its authentication (``Authorization`` or Azure's
``api-key``), Azure OpenAI (``openai.AsyncAzureOpenAI`` with ``api-version``), its
``OpenAI-Organization``/``OpenAI-Project`` headers (from OPENAI_ORG_ID / OPENAI_PROJECT_ID, the
SDK's own convention), ``default_headers``, and proxies from the environment through its HTTP
client. What it costs: ~1 ms more client CPU per request than the aiohttp transport
(bench/RESULTS.md), so it is not the default.

How a request is sent: ``client.post("chat/completions", content=body_bytes,
cast_to=httpx2.Response)``. The engine has already built and serialised the body (it is also
what the cache key hashes), so it goes out byte for byte; the SDK's typed
``chat.completions.create`` would re-validate and re-serialise it, reject non-OpenAI knobs such
as llama.cpp's ``top_k`` unless moved to ``extra_body``, and parse the answer into pydantic
models that would have to be dumped back. The SDK's own retries are off (``max_retries=0``):
the engine retries. Its HTTP client is ``openai.DefaultAioHttpClient`` (aiohttp under the SDK,
about half the CPU of its default httpx transport) when aiohttp is installed.

The API key comes only from ``[llm] api_key_env`` (``Endpoint.api_key``): the SDK's own
environment variables for keys (OPENAI_API_KEY, AZURE_OPENAI_API_KEY, AZURE_OPENAI_AD_TOKEN)
are never consulted, and an endpoint without a key sends no ``Authorization`` header.

Streaming works (``[llm] stream = true``): the SDK returns the open response and the engine's
SSE assembler reads it. Batch API mode keeps the aiohttp path for its multipart file upload
(``request_json`` with ``data=``); its JSON calls go through the SDK.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import httpx2
import openai

from builder.errors import ConfigError
from builder.llm.endpoint import Endpoint
from builder.llm.transport import (
    _LOOPBACK,
    _MAX_ERROR_BODY,
    AttemptError,
    Reply,
    Transport,
    assemble_stream,
    check_completion,
    decode_json_reply,
    status_error,
)
from builder.llm.window import parse_ratelimit
from builder.settings.llm import LLMSettings

#: Sent as the key when the endpoint has none: the SDK insists on one; the request then omits
#: the ``Authorization`` header (see ``_no_auth``), so it never reaches the server.
_NO_KEY = "no-key"


def _http_client(ep: Endpoint, settings: LLMSettings) -> Any:
    """The SDK's aiohttp-backed client when available, else its default httpx client; pool
    sized to the endpoint's concurrency, environment proxies except for loopback servers."""
    host = ep.base_url.split("://", 1)[-1]
    size = ep.max_concurrency + 4  # + a few for batch/check calls
    kwargs = dict(
        limits=httpx2.Limits(
            max_connections=size, max_keepalive_connections=size, keepalive_expiry=30
        ),
        timeout=_timeout(settings),
        trust_env=not host.startswith(_LOOPBACK),
    )
    try:
        return openai.DefaultAioHttpClient(**kwargs)
    except RuntimeError:  # openai installed without its aiohttp extra
        return openai.DefaultAsyncHttpxClient(**kwargs)


def _timeout(settings: LLMSettings) -> httpx2.Timeout:
    """Connect and read (longest silence) timeouts as in the aiohttp transport; no total."""
    return httpx2.Timeout(
        None,
        connect=settings.connect_timeout_s,
        read=settings.read_timeout_s,
        write=settings.read_timeout_s,
    )


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, outermost first: the SDK wraps httpx2 errors, which wrap
    aiohttp's or the OS's."""
    chain = [exc]
    while len(chain) < 10:
        nxt = chain[-1].__cause__ or chain[-1].__context__
        if nxt is None:
            break
        chain.append(nxt)
    return chain


def transport_error(exc: BaseException, label: str) -> AttemptError:
    """The ``retry`` ``AttemptError`` for a failure with no HTTP status, worded like the
    aiohttp transport's. Judged by the causes: the SDK's aiohttp adapter reports a reset
    connection as a "connect timeout", which would mislead."""
    chain = _chain(exc)
    root = chain[-1]
    name = type(root).__name__
    if any(isinstance(e, aiohttp.ClientPayloadError | httpx2.RemoteProtocolError) for e in chain):
        return AttemptError("retry", f"truncated response ({name})")
    if isinstance(root, TimeoutError | httpx2.TimeoutException) or "Timeout" in name:
        return AttemptError("retry", "timed out waiting for the server")
    if any(isinstance(e, aiohttp.ClientConnectorError | httpx2.ConnectError) for e in chain):
        return AttemptError("retry", f"cannot connect to {label} ({root})")
    return AttemptError("retry", f"connection error ({name}: {root})")


class OpenAITransport:
    """One endpoint through ``openai.AsyncOpenAI``, bound to the event loop that first uses it
    (the client, like an aiohttp session, is created on first use)."""

    #: the SDK client class (``AzureOpenAITransport`` swaps it)
    client_class: Any = openai.AsyncOpenAI

    def __init__(self, ep: Endpoint, settings: LLMSettings) -> None:
        self.ep = ep
        self.settings = settings
        self._plain: Transport | None = None  # aiohttp, for multipart uploads (Batch API)
        # per-request options: no Authorization header when the endpoint has no key
        self._options: dict[str, Any] = (
            {} if ep.api_key else {"headers": {"Authorization": openai.Omit()}}
        )
        self.check()  # configuration errors surface here, not mid-run
        # made on first use: the embedded server's URL is known only once it has started
        self._client: Any = None

    def check(self) -> None:
        """Raise ``ConfigError`` if this endpoint's settings cannot work (subclasses add)."""

    def _make_client(self) -> Any:
        try:
            return self.client_class(**self.client_kwargs())
        except openai.OpenAIError as exc:
            raise ConfigError(
                f"cannot create the openai client for {self.ep.label}: {self.ep.redact(str(exc))}",
                hint="check [llm] transport, api_key_env and api_version",
            ) from None

    def client_kwargs(self) -> dict[str, Any]:
        """Arguments of ``client_class`` (subclasses add theirs)."""
        return dict(
            api_key=self.ep.api_key or _NO_KEY,
            base_url=self.ep.base_url,
            max_retries=0,
            timeout=_timeout(self.settings),
            default_headers=self.ep.headers or None,
            http_client=_http_client(self.ep, self.settings),
        )

    @property
    def client(self) -> Any:
        """The SDK client (made again after ``close``)."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client = None
        if self._plain is not None:
            await self._plain.close()
            self._plain = None

    # -- chat completions --------------------------------------------------------------
    async def chat(self, data: bytes, *, stream: bool = False) -> Reply:
        """POST one chat completion through the SDK. Raises ``AttemptError`` like
        ``Transport.chat`` for anything but a good answer."""
        t0 = time.perf_counter()
        raw_text = None
        try:
            resp = await self.client.post(
                "chat/completions",
                content=data,
                cast_to=httpx2.Response,
                options=self._options,
                stream=stream,
            )
            if stream:
                try:
                    if resp.status_code != 200:
                        await resp.aread()
                        raise self._status_error(resp)
                    body = await assemble_stream(resp.aiter_lines())
                finally:
                    await resp.aclose()
            else:
                if resp.status_code != 200:
                    raise self._status_error(resp)
                raw_text, body = decode_json_reply(resp.content)
        except AttemptError:
            raise
        except openai.APIStatusError as exc:
            raise self._status_error(exc.response) from None
        except (openai.APIError, httpx2.HTTPError, OSError, TimeoutError) as exc:
            raise transport_error(exc, self.ep.label) from None
        check_completion(body)
        return Reply(body, time.perf_counter() - t0, raw_text, parse_ratelimit(resp.headers))

    def _status_error(self, resp: httpx2.Response) -> AttemptError:
        try:
            text = resp.content[:_MAX_ERROR_BODY].decode("utf-8", "replace")
        except httpx2.HTTPError:  # not read (closed early)
            text = ""
        err = status_error(self.ep, resp.status_code, text, resp.headers)
        err.ratelimit = parse_ratelimit(resp.headers)
        return err

    # -- small JSON calls (models, files, batches) -------------------------------------
    async def request_json(
        self, method: str, path: str, *, json_body: Any = None, data: Any = None
    ) -> Any:
        """One non-chat API call through the SDK; raises ``AttemptError`` like ``chat``.
        Multipart uploads (``data=``, the Batch API's file) take the aiohttp path."""
        if data is not None:
            if self._plain is None:
                self._plain = Transport(self.ep, self.settings)
            return await self._plain.request_json(method, path, json_body=json_body, data=data)
        try:
            verb = method.lower()  # the SDK's get/post/put/patch/delete
            kwargs = {} if verb == "get" else {"body": json_body}
            resp = await getattr(self.client, verb)(
                path, cast_to=httpx2.Response, options=self._options, **kwargs
            )
        except openai.APIStatusError as exc:
            raise self._status_error(exc.response) from None
        except (openai.APIError, httpx2.HTTPError, OSError, TimeoutError) as exc:
            raise transport_error(exc, self.ep.label) from None
        if resp.status_code not in (200, 201):
            raise self._status_error(resp)
        if path.endswith("/content"):
            return resp.content
        try:
            return json.loads(resp.content)
        except ValueError:
            raise AttemptError("retry", f"malformed JSON from {path}") from None


class AzureOpenAITransport(OpenAITransport):
    """``openai.AsyncAzureOpenAI``: the key goes in Azure's ``api-key`` header and every
    request carries ``?api-version=``. ``base_url`` is the deployment's URL
    (``https://NAME.openai.azure.com/openai/deployments/DEPLOYMENT``), since the engine sends
    a ready body and the SDK's model-to-deployment rewrite only applies to bodies it builds."""

    client_class = openai.AsyncAzureOpenAI

    def check(self) -> None:
        if not self.ep.api_key:
            raise ConfigError(
                f'transport "azure" needs an API key for {self.ep.label}',
                hint="set [llm] api_key_env to the name of the variable holding the key",
            )
        if not self.ep.api_version:
            raise ConfigError(
                f'transport "azure" needs api_version for {self.ep.label}',
                hint='set [llm] api_version, e.g. "2024-10-21"',
            )

    def client_kwargs(self) -> dict[str, Any]:
        return {**super().client_kwargs(), "api_version": self.ep.api_version}
