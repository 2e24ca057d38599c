"""[syllabus] section: GLAN-style syllabus generation (builder.syllabus)."""

from __future__ import annotations

from pydantic import Field, model_validator

from builder.settings.base import Section


class SyllabusSettings(Section):
    """How syllabi are asked for and what a valid one looks like.

    GLAN ("Synthetic Data (Almost) from Scratch", 2024) used 10-30 class sessions per subject;
    each session here has a title, ``min_goals``-``max_goals`` learning goals and
    ``min_concepts``-``max_concepts`` key concepts. The model is asked for exactly
    ``sessions``; a reply within ``session_tolerance`` of it (a fraction) is accepted.
    """

    generate_missing: bool = True
    sessions: int = Field(12, ge=1, le=60)
    session_tolerance: float = Field(0.25, ge=0, le=1)
    min_concepts: int = Field(3, ge=1, le=20)
    max_concepts: int = Field(6, ge=1, le=20)
    min_goals: int = Field(1, ge=0, le=10)
    max_goals: int = Field(3, ge=1, le=10)
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(2048, ge=64)
    # Extra requests (each a new sample) when the model's reply is invalid.
    retries: int = Field(1, ge=0, le=5)

    @model_validator(mode="after")
    def _bounds(self) -> SyllabusSettings:
        if self.min_concepts > self.max_concepts:
            raise ValueError("min_concepts must not exceed max_concepts")
        if self.min_goals > self.max_goals:
            raise ValueError("min_goals must not exceed max_goals")
        return self

    def session_bounds(self) -> tuple[int, int]:
        """The accepted number of sessions: ``sessions`` give or take the tolerance."""
        slack = int(self.sessions * self.session_tolerance)
        return max(1, self.sessions - slack), self.sessions + slack
