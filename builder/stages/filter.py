"""Stage ``filter``: quality filters and verification over each generation partition.

Reads ``work/generate/part-*.parquet`` in batches of at most ``[run] partition_rows`` rows
and writes ``work/filter/kept/part-*.parquet`` (``DOCUMENT_SCHEMA``) and
``work/filter/rejected/part-*.parquet`` (``REJECTED_SCHEMA``), in input order.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from builder.records import DOCUMENT_SCHEMA, REJECTED_SCHEMA, sha256_hex
from builder.stages.base import PartitionStage, RunContext, upstream
from builder.stages.generate import generated_parts

if TYPE_CHECKING:  # pragma: no cover
    from builder.config import CorpusConfig


class FilterStage(PartitionStage):
    """Filters (cheapest first) and verification of exercises (see ``builder.filters``)."""

    name = "filter"
    uses_llm = True  # second samples of quantitative exercises
    follows = ("generate", "")

    def __init__(self) -> None:
        self._reasons: Counter[str] = Counter()
        self._verified = 0

    def inputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.paths.stage_dir("generate")]

    def input_parts(self, ctx: RunContext) -> list[Path]:
        return generated_parts(ctx)

    def sinks(self) -> dict[str, pa.Schema]:
        return {"kept": DOCUMENT_SCHEMA, "rejected": REJECTED_SCHEMA}

    def fingerprint(self, ctx: RunContext) -> str | None:
        return sha256_hex([upstream(ctx, "generate"), self.task_fingerprint(ctx)])

    def task_fingerprint(self, ctx: RunContext) -> str | None:
        config = ctx.config
        needs_model = config.verify.enabled and config.verify.second_sample
        return sha256_hex(
            {
                "filters": config.filters.model_dump(mode="json"),
                "verify": config.verify.model_dump(mode="json"),
                # second samples come from the model: another model, other verdicts
                "model": ctx.llm().model_name if needs_model else None,
                "partition_rows": config.run.partition_rows,
            }
        )

    def needs_llm(self, ctx: RunContext) -> bool:
        return ctx.config.verify.enabled and ctx.config.verify.second_sample

    def run(self, ctx: RunContext) -> dict[str, Any]:
        self._reasons = Counter()
        self._verified = 0
        return super().run(ctx)

    def warm(self, ctx: RunContext) -> str | None:
        """The language detector and the token counter, loaded ahead of the first task."""
        from builder.tokens import ENCODING_LABEL

        self.preload(ctx.config)
        return f"pycld2, {ENCODING_LABEL}"

    def preload(self, config: CorpusConfig) -> None:
        from builder.filters import detect_language
        from builder.tokens import encoding

        detect_language("A sentence in English, to load the language detector.")
        encoding()

    def run_partition(self, ctx: RunContext, table: pa.Table) -> dict[str, Any]:
        from builder.filters import filter_table

        config = ctx.config
        llm = ctx.llm() if config.verify.enabled and config.verify.second_sample else None
        # Every kept row carries its token count: assembly takes them (``counted=True``).
        kept, rejected = filter_table(table, config.filters, config.verify, llm=llm)
        self._reasons.update(f"{r['stage']}/{r['reason']}" for r in rejected)
        self._verified += pc.sum(kept.column("verified")).as_py() or 0
        return {"kept": kept, "rejected": rejected}

    def task_counters(self) -> dict[str, Any]:
        out = {"reasons": dict(self._reasons), "verified": self._verified}
        self._reasons = Counter()
        self._verified = 0
        return out

    def finish(self, ctx: RunContext, counters: dict[str, Any]) -> None:
        # Summed over the partitions' task_counters (wherever each partition ran).
        reasons = dict(sorted((counters.get("reasons") or {}).items()))
        verified = int(counters.get("verified") or 0)
        counters.update(
            rows_in=counters["rows_in"],
            kept=counters["rows_kept"],
            rejected=counters["rows_rejected"],
            verified=verified,
            reasons=reasons,
        )
        ctx.log(
            f"[filter] kept {counters['kept']} ({verified} verified), rejected "
            f"{counters['rejected']}"
            + (f": {', '.join(f'{k} {v}' for k, v in reasons.items())}" if reasons else "")
        )


def kept_parts(ctx: RunContext) -> list[Path]:
    from builder.util.partitions import list_parts

    return list_parts(ctx.paths.stage_dir("filter") / "kept")
