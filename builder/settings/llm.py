"""[llm] section: endpoints, sampling defaults, concurrency, timeouts, retries, prices, cache.

Owned by ``builder.llm``. The smallest useful config is nothing at all (the embedded
SmolLM2 server); pointing the builder at any OpenAI-compatible server takes two keys::

    [llm]
    base_url = "https://api.openai.com/v1"
    model = "gpt-4o-mini"
    api_key_env = "OPENAI_API_KEY"      # the NAME of the variable; the key is never written
    prices = {"gpt-4o-mini" = {input = 0.15, output = 0.60}}   # USD per 1M tokens

Several replicas share the load with ``[[llm.endpoints]]`` tables (same keys plus
``max_concurrency`` and ``kind``).

``transport`` chooses how requests travel (per endpoint too): ``"http"`` (default: the
engine speaks the OpenAI wire format itself, with a lean HTTP/1.1 client for ``http://``
chat completions and aiohttp for the rest: ``https://``, streams, proxies, Batch API calls),
``"aiohttp"`` (aiohttp for everything, ~0.2 ms of client CPU per request),
``"openai"`` (through the official ``openai.AsyncOpenAI`` client, for its auth, proxy and
header handling; ~1 ms more CPU per request) or ``"azure"`` (``openai.AsyncAzureOpenAI``;
needs ``api_version`` and ``api_key_env``; ``base_url`` is the deployment URL, e.g.
``https://NAME.openai.azure.com/openai/deployments/DEPLOYMENT``). Answers and cache keys do
not depend on it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from builder.settings.base import Section

#: How a server wants structured output and which extra sampling knobs it takes.
#: ``openai``: ``response_format={"type": "json_schema", ...}`` (OpenAI, vLLM, most servers);
#: ``llama.cpp``: ``{"type": "json_object", "schema": ...}`` plus top_k/min_p/repeat_penalty.
EndpointKind = Literal["openai", "llama.cpp"]

#: How requests travel (``builder.llm.transports.TRANSPORTS``): the lean client (aiohttp
#: where it does not apply), raw aiohttp, ``openai.AsyncOpenAI`` or ``openai.AsyncAzureOpenAI``.
TransportName = Literal["http", "aiohttp", "openai", "azure"]


class EndpointSettings(Section):
    """One OpenAI-compatible endpoint. The key itself is never stored: only the env var name."""

    base_url: str
    model: str
    api_key_env: str | None = None
    kind: EndpointKind = "openai"
    max_concurrency: int | None = Field(None, ge=1, le=4096)  # default: [llm] max_concurrency
    transport: TransportName | None = None  # default: [llm] transport
    api_version: str | None = None  # default: [llm] api_version
    default_headers: dict[str, str] | None = None  # added to (and override) [llm] default_headers
    max_requests_per_minute: float | None = Field(None, gt=0)  # default: [llm]'s
    max_tokens_per_minute: float | None = Field(None, gt=0)  # default: [llm]'s


class PriceSettings(Section):
    """USD per 1M tokens. ``batch_*`` apply in Batch API mode (default: half the online price)."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    batch_input: float | None = Field(None, ge=0)
    batch_output: float | None = Field(None, ge=0)


class LLMSettings(Section):
    """Where requests go and how. With no ``base_url`` and no ``endpoints`` the embedded model
    (SmolLM2-135M via ``python -m llama_cpp.server``) is used."""

    # -- endpoints ---------------------------------------------------------------------
    embedded: bool | None = None  # None: embedded iff no endpoint is configured
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    kind: EndpointKind = "openai"
    endpoints: list[EndpointSettings] = Field(default_factory=list)
    transport: TransportName = "http"  # see the module docstring
    api_version: str | None = None  # Azure OpenAI api-version (transport = "azure")
    # Extra headers on every request (e.g. {"OpenAI-Organization" = "org-..."}). They are part
    # of the config, which runs record: never put a secret here, keys go in api_key_env.
    default_headers: dict[str, str] = Field(default_factory=dict)

    # -- sampling defaults (filled into every request that does not set them) ----------
    seed: int = 0  # a request's seed defaults to seed + sample_index
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1)
    # llama.cpp servers only (their server defaults differ from in-process llama_cpp):
    top_k: int = Field(40, ge=0)
    min_p: float = Field(0.05, ge=0, le=1)
    repeat_penalty: float = Field(1.0, gt=0)

    # -- transport, concurrency, retries -----------------------------------------------
    # The window of requests in flight per endpoint starts with a quick ramp to
    # max_concurrency, finds the endpoint's limit from its 429s and stays near it
    # (builder/llm/window.py); it never goes below min_concurrency.
    max_concurrency: int = Field(16, ge=1, le=4096)
    min_concurrency: int = Field(1, ge=1, le=4096)
    # Rate limits for endpoints that do not send x-ratelimit-* headers (per endpoint; with
    # the headers, the endpoint's own figures are used): launches are paced under them.
    # Tokens are estimated as prompt bytes / 4 + max_tokens, as OpenAI counts them.
    max_requests_per_minute: float | None = Field(None, gt=0)
    max_tokens_per_minute: float | None = Field(None, gt=0)
    embedded_concurrency: int = Field(1, ge=1, le=16)  # the embedded server runs one at a time
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0)  # longest silence while waiting for a response
    max_attempts: int = Field(6, ge=1, le=50)
    max_retry_time_s: float = Field(600.0, gt=0)  # per request, across its attempts
    backoff_base_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    stream: bool = False  # stream responses (inter-chunk read timeout; more client CPU)
    embedded_start_timeout_s: float = Field(120.0, gt=0)

    # -- cache, budget, progress -------------------------------------------------------
    cache_dir: str | None = None
    # USD per 1M tokens by model name: {"gpt-4o-mini" = {input = 0.15, output = 0.6}}
    prices: dict[str, PriceSettings] = Field(default_factory=dict)
    # Share of max_tokens a reply is expected to use, for `corpus plan` estimates
    # (budget reservations always assume the worst case, max_tokens).
    expected_output_fraction: float = Field(0.5, gt=0, le=1)
    progress_interval_s: float = Field(10.0, gt=0)  # log-line period when not on a TTY

    # -- Batch API mode ----------------------------------------------------------------
    batch: bool = False
    batch_poll_s: float = Field(30.0, gt=0)
    batch_completion_window: str = "24h"
    batch_max_requests: int = Field(50_000, ge=1, le=50_000)

    @model_validator(mode="after")
    def _check(self) -> LLMSettings:
        if self.min_concurrency > self.max_concurrency:
            raise ValueError("min_concurrency must not exceed max_concurrency")
        if self.base_url is not None and not self.model:
            raise ValueError("base_url is set but model is not: set [llm] model too")
        for where, transport, version in [
            ("[llm]", self.transport, self.api_version),
            *(
                (f"[[llm.endpoints]] {e.base_url}", e.transport or self.transport, e.api_version)
                for e in self.endpoints
            ),
        ]:
            if transport == "azure" and not (version or self.api_version):
                raise ValueError(
                    f'{where}: transport = "azure" needs api_version (e.g. "2024-10-21")'
                )
        return self
