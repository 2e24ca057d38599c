"""[output] section: where runs go and how big shards are."""

from __future__ import annotations

from pydantic import Field

from builder.settings.base import Section


class OutputSettings(Section):
    dir: str = "outputs"
    run: str = "demo"
    shard_max_rows: int = Field(50_000, ge=1)
    shard_max_mb: float = Field(256.0, gt=0)
    license: str = "other"
