"""[syllabus] section: GLAN-style syllabus generation."""

from __future__ import annotations

from pydantic import Field

from builder.settings.base import Section


class SyllabusSettings(Section):
    generate_missing: bool = True
    sessions: int = Field(12, ge=1, le=60)
    min_concepts: int = Field(3, ge=1, le=20)
    max_concepts: int = Field(6, ge=1, le=20)
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(2048, ge=64)
