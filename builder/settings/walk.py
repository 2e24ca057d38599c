"""[walk] section: how the walker samples generation units."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from builder.settings.base import Section


class WalkSettings(Section):
    seed: int = 0
    limit: int | None = Field(None, ge=1)
    token_budget: int | None = Field(None, ge=1)
    subtree: list[str] = Field(default_factory=list)
    level: str | None = None
    order: Literal["random", "curriculum"] = "random"
