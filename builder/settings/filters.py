"""[filters] and [verify] sections: quality filters and execution-based verification."""

from __future__ import annotations

from pydantic import Field

from builder.settings.base import Section


class FilterSettings(Section):
    drop_truncated: bool = True
    drop_refusals: bool = True
    min_tokens: int = Field(150, ge=0)
    max_repetition: float = Field(0.3, ge=0, le=1)
    language: str | None = "en"


class VerifySettings(Section):
    enabled: bool = True
    timeout_s: float = Field(10.0, gt=0)
    memory_mb: int = Field(512, ge=32)
    drop_unverified: bool = True
