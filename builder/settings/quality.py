"""[embeddings] and [judge] sections: the quality gates' models (``builder.quality``).

Embeddings are computed offline on CPU by default with WordLlama (its 16 MB weights ship in
the wheel, no network); naming an OpenAI-compatible endpoint sends ``/v1/embeddings``
requests instead, cached and retried like chat requests::

    [embeddings]
    base_url = "https://api.openai.com/v1"
    model = "text-embedding-3-small"
    api_key_env = "OPENAI_API_KEY"

The educational-value judge is off unless ``[judge] enabled = true``; it uses the teacher's
endpoint unless it names its own ``base_url`` and ``model``.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from builder.settings.base import Section
from builder.settings.llm import EndpointKind


class EmbeddingSettings(Section):
    """Where document embeddings come from (relevance, semantic dedup, diversity)."""

    #: compute embeddings at all (off: no relevance, no semantic dedup, no embedding diversity)
    enabled: bool = True
    #: an OpenAI-compatible endpoint (None: the bundled offline WordLlama model)
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    #: optional ``dimensions`` parameter of the embeddings API (part of the cache key)
    dimensions: int | None = Field(None, ge=1)
    #: texts per /v1/embeddings request, and requests in flight
    batch_size: int = Field(64, ge=1, le=2048)
    max_concurrency: int = Field(4, ge=1, le=256)
    #: characters of a document that are embedded (long texts are cut, the start is kept)
    max_chars: int = Field(8000, ge=100)

    @model_validator(mode="after")
    def _check(self) -> EmbeddingSettings:
        if (self.base_url is None) != (self.model is None):
            raise ValueError("[embeddings] needs both base_url and model (or neither)")
        return self


class JudgeSettings(Section):
    """The LLM judge of educational value (an additive 0-5 rubric, FineWeb-Edu style)."""

    enabled: bool = False
    #: its own endpoint and model (None: the teacher's [llm] endpoint)
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    kind: EndpointKind = "openai"
    #: the prompt template (YAML front matter + Jinja body), relative to the config file
    template: str = "templates/judge/edu_value.j2"
    #: characters of a document shown to the judge
    max_chars: int = Field(6000, ge=200)
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(300, ge=16)

    @model_validator(mode="after")
    def _check(self) -> JudgeSettings:
        if (self.base_url is None) != (self.model is None):
            raise ValueError("[judge] needs both base_url and model (or neither)")
        return self
