"""What a dedup run returns: its counters (``DedupStats``) and results (``DedupResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from builder.diversity import DiversityReport
from builder.settings.dedup import DedupSettings

CLUSTER_COLUMNS = (
    "id",
    "cluster_id",
    "representative_id",
    "kind",
    "removed",
    "cluster_size",
    "jaccard",
    "matched_id",
    "matched_jaccard",
)


@dataclass
class DedupStats:
    """Counts and timings of one dedup run (what the CLI prints and the manifest keeps)."""

    rows_in: int = 0
    rows_out: int = 0
    exact_removed: int = 0
    near_removed: int = 0
    clusters: int = 0
    largest_cluster: int = 0
    empty_texts: int = 0
    candidate_pairs: int = 0
    verified_pairs: int = 0
    workers: int = 1
    seconds: float = 0.0
    signature_seconds: float = 0.0
    cluster_seconds: float = 0.0
    write_seconds: float = 0.0
    # Signature pieces: how many, how many a rerun found finished (not recomputed).
    pieces: int = 0
    pieces_reused: int = 0
    # Band grouping: buckets, and the most band entries one bucket task held at once.
    buckets: int = 0
    largest_bucket_entries: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def removed(self) -> int:
        return self.exact_removed + self.near_removed

    @property
    def docs_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "exact_removed": self.exact_removed,
            "near_removed": self.near_removed,
            "clusters": self.clusters,
            "largest_cluster": self.largest_cluster,
            "empty_texts": self.empty_texts,
            "candidate_pairs": self.candidate_pairs,
            "verified_pairs": self.verified_pairs,
            "workers": self.workers,
            "seconds": round(self.seconds, 3),
            "signature_seconds": round(self.signature_seconds, 3),
            "cluster_seconds": round(self.cluster_seconds, 3),
            "write_seconds": round(self.write_seconds, 3),
            "pieces": self.pieces,
            "pieces_reused": self.pieces_reused,
            "buckets": self.buckets,
            "largest_bucket_entries": self.largest_bucket_entries,
            "docs_per_s": round(self.docs_per_s, 1),
            "settings": self.settings,
        }


@dataclass
class DedupResult:
    """What dedup found.

    ``kept``: surviving rows, every input column (``None`` from ``dedup_files``, which
    writes them to ``paths["kept"]`` instead). ``clusters``: one row per member of every
    duplicate cluster, representatives included (columns ``CLUSTER_COLUMNS``). ``removed``:
    the removed rows as rejection records (id, stage, reason, detail, cluster_id,
    representative_id, kind, jaccard).
    """

    kept: pl.DataFrame | None
    clusters: pl.DataFrame
    removed: pl.DataFrame
    stats: DedupStats
    paths: dict[str, Path] = field(default_factory=dict)
    # Duplicate rates per taxonomy node (when the input has a taxonomy_path column).
    nodes: pl.DataFrame | None = None
    # The full diversity report, when asked for (dedup_files(..., diversity=True)).
    diversity: DiversityReport | None = None
    # Decontamination hits of every input row, by id, when asked for (dedup_files(...,
    # scan=IndexSpec)): builder.decontam_index.HIT_COLUMNS.
    scan_hits: pl.DataFrame | None = None


def settings_dict(settings: DedupSettings) -> dict[str, Any]:
    """The settings a run's stats record (what decides its clusters)."""
    keys = (
        "exact",
        "near",
        "mode",
        "scheme",
        "num_perm",
        "bands",
        "rows",
        "shingle_size",
        "threshold",
        "seed",
        "max_bucket",
    )
    return {k: getattr(settings, k) for k in keys}
