"""[taxonomy] section: where the taxonomy lives and which nodes builds use."""

from __future__ import annotations

from pydantic import Field

from builder.settings.base import Section


class TaxonomySettings(Section):
    # Directory of discipline files (*.yaml at its top level), relative to corpus.toml.
    dir: str = "taxonomy"
    # Not a key of corpus.toml: proposed nodes are walked with `[walk] include_proposed`
    # (one place; `load_config` refuses this key in a file and names the new one). Kept, always
    # False, for code that still reads it.
    include_proposed: bool = Field(False, exclude=True)
    # Level names, top first: `corpus taxonomy add` gives a new node the level after its
    # parent's when it has no siblings to copy, and JSON imports name levels by depth.
    levels: list[str] = Field(default_factory=lambda: ["discipline", "subject", "topic"])
