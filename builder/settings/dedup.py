"""[dedup] and [decontam] sections.

Defaults are tuned for near-duplicates at word-5-gram Jaccard ~0.8: 128 permutations in 16
bands of 8 rows compare a pair at s = 0.8 with probability 0.95 and at s = 0.85 with 0.994
(datasketch's own choice for 0.8, 9 x 13, only 0.40 / 0.69). ``corpus dedup --explain``
prints the whole S-curve for the chosen values.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from builder.settings.base import Section


class DedupSettings(Section):
    enabled: bool = True
    # Exact: same text after NFKC, lowercasing and whitespace collapsing.
    exact: bool = True
    # Near: MinHash LSH over word n-gram shingles, candidates verified by estimated Jaccard.
    near: bool = True
    # "fast": vectorised shingle hashing (xxh3 words, numpy); "datasketch": signatures equal
    # to datasketch.MinHash(num_perm, seed, scheme) fed the shingle strings (slower: SHA-1).
    mode: Literal["fast", "datasketch"] = "fast"
    # Permutation scheme of datasketch mode: "affine32" (datasketch >= 2.0) or "legacy" (< 2.0).
    scheme: Literal["affine32", "legacy"] = "affine32"
    num_perm: int = Field(128, ge=8, le=1024)
    bands: int = Field(16, ge=1)
    rows: int = Field(8, ge=1)
    shingle_size: int = Field(5, ge=1, le=20)
    threshold: float = Field(0.8, gt=0, le=1)
    seed: int = Field(1, ge=0, le=2**32 - 1)
    # Buckets (documents sharing one band) up to this size yield all pairs; larger ones a
    # star plus a chain, so boilerplate cannot blow up the pair count.
    max_bucket: int = Field(64, ge=2)
    # Rows per worker task; workers default to every core.
    partition_size: int = Field(20_000, ge=1)
    workers: int | None = Field(None, ge=1)
    # Diversity report: how many leading words make a document's "opener".
    opener_words: int = Field(5, ge=1, le=50)
    # Semantic near-duplicates (builder.quality.semdedup): embedding cosine >= this within
    # k-means clusters; always reported, removed only when semantic = true.
    semantic: bool = False
    semantic_threshold: float = Field(0.95, gt=0, le=1)
    semantic_cluster_size: int = Field(1000, ge=10)

    @model_validator(mode="after")
    def _check_banding(self) -> DedupSettings:
        if self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"bands x rows ({self.bands} x {self.rows} = {self.bands * self.rows}) must not "
                f"exceed num_perm ({self.num_perm})"
            )
        if self.mode == "fast" and self.scheme != "affine32":
            raise ValueError("scheme 'legacy' needs mode 'datasketch'")
        return self

    def with_overrides(self, **values: Any) -> DedupSettings:
        """A copy with the non-None ``values`` applied, validated as a whole."""
        data = self.model_dump()
        data.update({k: v for k, v in values.items() if v is not None})
        return DedupSettings.model_validate(data)


class DecontamSettings(Section):
    enabled: bool = True
    # Benchmark files (JSONL, Parquet, or plain text: one item per paragraph, else per line).
    benchmarks: list[str] = Field(default_factory=list)
    # Field/column holding each benchmark item's text (default: the first of text, question,
    # prompt, input, content, problem present in the file).
    text_field: str | None = None
    # Documents sharing any ngram-word sequence (normalised words) with an item are flagged.
    ngram: int = Field(13, ge=3, le=64)
    # Items shorter than ngram words but at least min_words long are matched whole.
    min_words: int = Field(8, ge=1)
    # Fuzzy check: score the region around each hit with rapidfuzz partial_ratio, and also
    # flag documents that share a fuzzy_ngram-word sequence with an item when that region
    # scores >= fuzzy_threshold (catches passages with small edits every few words).
    fuzzy: bool = False
    fuzzy_ngram: int = Field(8, ge=3, le=64)
    fuzzy_threshold: float = Field(85.0, ge=0, le=100)
    partition_size: int = Field(20_000, ge=1)
    workers: int | None = Field(None, ge=1)

    def with_overrides(self, **values: Any) -> DecontamSettings:
        """A copy with the non-None ``values`` applied, validated as a whole."""
        data = self.model_dump()
        data.update({k: v for k, v in values.items() if v is not None})
        return DecontamSettings.model_validate(data)
