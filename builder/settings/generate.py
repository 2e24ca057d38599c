"""[generate] section: templates, audiences, styles, documents per unit, sampling, evolution."""

from __future__ import annotations

from pydantic import Field

from builder.settings.base import Section


class GenerateSettings(Section):
    """How walker units become requests (see builder.generate.plan_requests)."""

    templates_dir: str = "templates"
    # Template names to use; empty: every template (generators and transforms) in the folder.
    templates: list[str] = Field(default_factory=list)
    # Audience / style ids to draw from; empty: each template's own list (default: all).
    audiences: list[str] = Field(default_factory=list)
    styles: list[str] = Field(default_factory=list)
    # Documents per unit: that many (template, audience, style) draws, seeded by unit id.
    documents_per_unit: int = Field(1, ge=1, le=100)
    # Seed of those draws and of each request's sampling seed (change it to resample).
    seed: int = 0
    # Run kind: transform templates (Evol-Instruct) on generated exercises.
    evolve: bool = True
    # Evolution steps per exercise; None: each transform template's transform_of.steps.
    evolution_steps: int | None = Field(None, ge=0, le=5)
    # Overrides of every template's sampling parameters (None: the template's value).
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=16)
