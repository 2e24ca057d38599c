"""[walk] section: how the walker samples generation units (builder.walk)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from builder.settings.base import Section


class WalkSettings(Section):
    """Defaults for ``walk_topics``; ``corpus walk`` flags override them.

    With none of ``limit``, ``token_budget`` or ``rounds`` set, ``corpus walk`` walks one
    round (every selected topic or session exactly once).
    """

    seed: int = 0
    limit: int | None = Field(None, ge=1)
    token_budget: int | None = Field(None, ge=1)
    # Estimated tokens one unit costs downstream (documents x tokens), for token_budget.
    tokens_per_unit: float = Field(1500.0, gt=0)
    rounds: int | None = Field(None, ge=1)
    subtree: list[str] = Field(default_factory=list)
    level: str | None = None
    order: Literal["random", "curriculum"] = "random"
    # Walk proposed nodes and proposed syllabi too (default: approved only).
    include_proposed: bool = False
    # Use approved syllabi where subjects have one (GLAN); else topic leaves only.
    use_syllabi: bool = True
    sessions_per_unit: tuple[int, int] = (1, 2)
    concepts_per_unit: tuple[int, int] = (1, 5)

    @model_validator(mode="after")
    def _ranges(self) -> WalkSettings:
        for name in ("sessions_per_unit", "concepts_per_unit"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"{name} must be [low, high] with 1 <= low <= high")
        return self
