"""[llm] section: endpoints, model, concurrency, timeouts, prices, cache. Owned by builder.llm."""

from __future__ import annotations

from pydantic import Field

from builder.settings.base import Section


class EndpointSettings(Section):
    """One OpenAI-compatible endpoint. The key itself is never stored: only the env var name."""

    base_url: str
    model: str
    api_key_env: str | None = None
    max_concurrency: int = Field(16, ge=1, le=4096)


class LLMSettings(Section):
    """Where requests go. With no ``base_url`` and no ``endpoints`` the embedded model is used."""

    embedded: bool | None = None
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    endpoints: list[EndpointSettings] = Field(default_factory=list)
    max_concurrency: int = Field(16, ge=1, le=4096)
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0)
    max_attempts: int = Field(6, ge=1, le=50)
    max_retry_time_s: float = Field(600.0, gt=0)
    cache_dir: str | None = None
    # USD per 1M tokens, by model name: {"gpt-4o-mini" = {input = 0.15, output = 0.6}}
    prices: dict[str, dict[str, float]] = Field(default_factory=dict)
