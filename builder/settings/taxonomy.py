"""[taxonomy] section: where the taxonomy lives and which nodes builds use."""

from __future__ import annotations

from builder.settings.base import Section


class TaxonomySettings(Section):
    dir: str = "taxonomy"
    include_proposed: bool = False
