"""curriculum-corpus-builder: textbook-style corpora from a curated discipline taxonomy.

The public API is importable without the CLI::

    from builder import load_taxonomy, walk_topics
    tax = load_taxonomy("taxonomy")
    for unit in walk_topics(tax, seed=1, limit=10):
        print(unit.taxonomy_path, unit.concepts)

Names are resolved lazily so that ``import builder`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "load_taxonomy": "builder.taxonomy",
    "Taxonomy": "builder.taxonomy",
    "Node": "builder.taxonomy",
    "walk_topics": "builder.walk",
    "walk_from_settings": "builder.walk",
    "Walk": "builder.walk",
    "coverage": "builder.walk",
    "validate_taxonomy": "builder.taxonomy",
    "TaxonomyEditor": "builder.taxonomy",
    "load_templates": "builder.templates",
    "filter_documents": "builder.filters",
    "verify_document": "builder.verify",
    "dedup_table": "builder.dedup",
    "open_engine": "builder.llm",
    "Unit": "builder.records",
    "ChatRequest": "builder.records",
    "ChatResult": "builder.records",
    "load_config": "builder.config",
    "CorpusConfig": "builder.config",
    "BuilderError": "builder.errors",
    "build": "builder.pipeline",
    "plan": "builder.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'builder' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
