"""[generate] section: templates, audiences, styles, documents per unit, sampling."""

from __future__ import annotations

from pydantic import Field

from builder.settings.base import Section


class GenerateSettings(Section):
    templates_dir: str = "templates"
    templates: list[str] = Field(default_factory=list)  # empty: every non-system template
    audiences: list[str] = Field(default_factory=list)  # empty: each template's own list
    styles: list[str] = Field(default_factory=list)
    documents_per_unit: int = Field(1, ge=1, le=100)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=16)
