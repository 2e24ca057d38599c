"""[taxonomy] section: where the taxonomy lives and which nodes builds use."""

from __future__ import annotations

from pydantic import Field

from builder.settings.base import Section


class TaxonomySettings(Section):
    # Directory of discipline files (*.yaml at its top level), relative to corpus.toml.
    dir: str = "taxonomy"
    # Whether builds also use nodes with `status: proposed` (not yet approved by a curator).
    include_proposed: bool = False
    # Level names, top first: `corpus taxonomy add` gives a new node the level after its
    # parent's when it has no siblings to copy, and JSON imports name levels by depth.
    levels: list[str] = Field(default_factory=lambda: ["discipline", "subject", "topic"])
