"""[dedup] and [decontam] sections."""

from __future__ import annotations

from pydantic import Field

from builder.settings.base import Section


class DedupSettings(Section):
    enabled: bool = True
    exact: bool = True
    near: bool = True
    num_perm: int = Field(128, ge=8, le=1024)
    bands: int = Field(16, ge=1)
    rows: int = Field(8, ge=1)
    shingle_size: int = Field(5, ge=1, le=20)
    threshold: float = Field(0.8, gt=0, le=1)
    seed: int = 1


class DecontamSettings(Section):
    enabled: bool = True
    benchmarks: list[str] = Field(default_factory=list)
    text_field: str | None = None
    ngram: int = Field(13, ge=3, le=64)
    fuzzy: bool = False
