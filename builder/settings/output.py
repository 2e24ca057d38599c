"""[output] section: where runs go, how big shards are, and what the dataset card declares."""

from __future__ import annotations

from pydantic import Field

from builder.settings.base import Section


class OutputSettings(Section):
    """Run directory ``<dir>/<run>/`` and the corpus files written into it.

    Shards hold at most ``shard_max_rows`` rows and about ``shard_max_mb`` MB of uncompressed
    row data (estimated from the text's UTF-8 bytes plus a fixed allowance per row), so the
    compressed Parquet file is smaller still. The cap of 1024 MB keeps every string column of a
    shard within one Arrow array (2 GiB offsets), which is what keeps shards readable everywhere.
    """

    dir: str = "outputs"
    run: str = "demo"
    shard_max_rows: int = Field(50_000, ge=1)
    shard_max_mb: float = Field(256.0, gt=0, le=1024)
    # Parquet row groups per shard are this many rows (readers fetch one group at a time).
    row_group_rows: int = Field(10_000, ge=1)
    # zstd level for shards: 3 is zstd's default; higher is smaller and slower to write.
    compression_level: int = Field(3, ge=1, le=22)
    # Dataset card: an SPDX-style id as Hugging Face expects (e.g. apache-2.0, cc-by-4.0), or
    # "other" with license_name/license_link saying which terms apply.
    license: str = "other"
    license_name: str | None = None
    license_link: str | None = None
    pretty_name: str | None = None
    # Words that make up a document's "opener" in the report's repeated-openers table.
    opener_words: int = Field(4, ge=1, le=20)
    # Documents per taxonomy node whose texts the card's and report's lexical diversity
    # measures (compression ratio, distinct-n) use: the ones with the smallest id hash, so
    # the sample is the same on every rebuild (builder.quality.metrics.LEXICAL_SAMPLE).
    # Embedding measures (mean similarity, Vendi) always use every document.
    diversity_sample: int = Field(100, ge=2)
