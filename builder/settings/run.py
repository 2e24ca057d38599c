"""[run] section: how big the partitions of a run directory are (memory is flat in corpus
size: a stage holds about one partition at a time), and which executor maps the partitioned
stages over them (``local``, or ``ray`` on a cluster)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from builder.settings.base import Section


class RunSettings(Section):
    """Partition bounds of the stages' intermediate files under ``<run>/work/``.

    The defaults suit 2 cores and 4 GB: a partition of 20,000 documents of ~2 KB is ~40 MB
    as Python rows. ``units_per_partition`` sets how many walked units generation plans and
    sends at once (its requests fill the endpoint's concurrency); its results are saved to
    a journal every ``flush_rows`` results, which bounds what a ``kill -9`` can lose (lost
    results are answered by the LLM cache on resume, costing nothing).
    """

    partition_rows: int = Field(20_000, ge=1)
    partition_mb: float = Field(64.0, gt=0)
    units_per_partition: int = Field(2_000, ge=1)
    flush_rows: int = Field(512, ge=1)
    #: Who maps the partitioned stages: ``local`` (this process) or ``ray`` (tasks on a Ray
    #: cluster; the run directory must be on a filesystem every node sees). Both write the
    #: same bytes, so these two keys are left out of the config dump, its hash and the
    #: manifest (``exclude=True``): how a corpus was computed is not part of what it is.
    executor: Literal["local", "ray"] = Field("local", exclude=True)
    #: Processes the local executor maps a partitioned stage's partitions on (filter,
    #: quality; only when the stage needs no model for the config): 0 = one per CPU (at
    #: most 4), 1 = in the build's own process. Same bytes either way (left out of the
    #: config's hash, like ``executor``).
    workers: int = Field(0, ge=0, exclude=True)
    #: Ray cluster address: ``auto`` (an existing cluster, else a local one), or
    #: ``host:port`` of a head node.
    ray_address: str = Field("auto", min_length=1, exclude=True)
    #: Run filter and quality on each generation partition as soon as generate has written
    #: it (one worker process at low CPU priority, local executor only), so they use the
    #: CPU that waiting on the model leaves idle; the stages then skip what it finished.
    #: Same bytes either way (left out of the config's hash).
    follow: bool = Field(True, exclude=True)

    @property
    def partition_bytes(self) -> int:
        return int(self.partition_mb * 1024 * 1024)
