"""Exact and near-duplicate removal (MinHash LSH) for any table with a text column.

Library entry points:

- ``dedup_table(df_or_path, settings)`` -> ``DedupResult`` (kept rows, clusters, removed);
- ``dedup_files(input, outdir, settings)`` streams inputs of any size to
  ``outdir/kept.parquet`` and ``outdir/clusters.parquet``;
- ``MinHasher`` computes signatures (``mode="datasketch"`` matches ``datasketch.MinHash``);
- ``explain(...)`` prints the S-curve of a bands x rows choice.

See ``engine.py`` for the pipeline (``source``, ``signatures``, ``buckets``, ``plan``,
``output`` for its parts) and ``normalize.py`` for the exact text definitions.

Names are imported on first use (PEP 562): a worker process that only needs
``builder.dedup.signatures`` does not pay for the engine, Polars plans and pydantic settings
(~0.3 s a worker).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "CLUSTER_COLUMNS": "stats",
    "DedupResult": "stats",
    "DedupStats": "stats",
    "dedup_files": "engine",
    "dedup_table": "engine",
    "candidate_probability": "lsh",
    "explain": "lsh",
    "optimal_bands_rows": "lsh",
    "s_curve": "lsh",
    "MinHasher": "minhash",
    "permutations": "minhash",
    "sha1_hash32": "minhash",
    "exact_key_text": "normalize",
    "ngram_hashes": "normalize",
    "normalize_text": "normalize",
    "shingles": "normalize",
    "tokenize": "normalize",
    "words": "normalize",
}

__all__ = [
    "CLUSTER_COLUMNS",
    "DedupResult",
    "DedupStats",
    "MinHasher",
    "candidate_probability",
    "dedup_files",
    "dedup_table",
    "exact_key_text",
    "explain",
    "ngram_hashes",
    "normalize_text",
    "optimal_bands_rows",
    "permutations",
    "s_curve",
    "sha1_hash32",
    "shingles",
    "tokenize",
    "words",
]

if TYPE_CHECKING:  # pragma: no cover
    from builder.dedup.engine import dedup_files, dedup_table
    from builder.dedup.lsh import candidate_probability, explain, optimal_bands_rows, s_curve
    from builder.dedup.minhash import MinHasher, permutations, sha1_hash32
    from builder.dedup.normalize import (
        exact_key_text,
        ngram_hashes,
        normalize_text,
        shingles,
        tokenize,
        words,
    )
    from builder.dedup.stats import CLUSTER_COLUMNS, DedupResult, DedupStats


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'builder.dedup' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"builder.dedup.{module}"), name)
    globals()[name] = value
    return value
