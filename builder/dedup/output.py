"""Writing dedup's results: the kept rows (streamed again from the input) and per-node rates."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from builder.dedup.plan import Plan
from builder.dedup.rowids import node_rates_of
from builder.dedup.source import ArrowFilesSource
from builder.diversity import (
    DiversityReport,
    diversity_from_openers,
    node_rates,
)
from builder.io_tables import ParquetSink, RowFiles, TableSource, arrow_mask
from builder.settings.dedup import DedupSettings
from builder.util.ahead import read_ahead


def with_dup_cluster(frame: pl.DataFrame, plan: Plan, offset: int = 0) -> pl.DataFrame:
    """Fill ``dup_cluster`` of kept rows (cluster id of representatives, else null)."""
    if "dup_cluster" not in frame.columns:
        return frame
    rows = pl.DataFrame({"row": np.arange(offset, offset + frame.height, dtype=np.int64)})
    joined = rows.join(plan.rep_cluster, on="row", how="left", maintain_order="left")
    return frame.with_columns(joined["cluster_id"].alias("dup_cluster"))


def _dup_flags(plan: Plan, lo: int, hi: int) -> dict[str, np.ndarray]:
    """``exact_dup``, ``near_dup`` and ``dup`` of rows ``lo..hi`` (from the removed rows)."""
    a, b = np.searchsorted(plan.removed_rows, [lo, hi])
    exact = np.zeros(hi - lo, dtype=bool)
    near = np.zeros(hi - lo, dtype=bool)
    rows = plan.removed_rows[a:b] - lo
    is_exact = plan.removed_exact[a:b]
    exact[rows[is_exact]] = True
    near[rows[~is_exact]] = True
    return {"exact_dup": exact, "near_dup": near, "dup": exact | near}


_DUP_FLAGS = ["exact_dup", "near_dup", "dup"]


def node_dup_rates(paths: pl.Series | None, plan: Plan) -> pl.DataFrame | None:
    """Duplicate rates per taxonomy node, from each row's taxonomy_path."""
    if paths is None:
        return None
    return node_rates(
        pl.DataFrame({"taxonomy_path": paths, **_dup_flags(plan, 0, len(paths))}), _DUP_FLAGS
    )


def node_dup_rates_of(source: RowFiles, plan: Plan) -> pl.DataFrame | None:
    """``node_dup_rates`` of a table source's paths, read a batch at a time (None without a
    ``taxonomy_path`` column)."""
    if "taxonomy_path" not in source.columns:
        return None
    return node_rates_of(source, lambda lo, hi: _dup_flags(plan, lo, hi), _DUP_FLAGS)  # type: ignore[arg-type]


# -- Public API -------------------------------------------------------------------------------


def plan_kept_rows(plan: Plan) -> Plan:
    """The plan with ``rep_cluster`` rows renumbered to positions among kept rows."""
    kept_pos = np.cumsum(plan.keep) - 1
    rep = plan.rep_cluster.with_columns(
        pl.Series("row", kept_pos[plan.rep_cluster["row"].to_numpy()], dtype=pl.Int64)
    )
    return replace(plan, rep_cluster=rep)


def write_kept(
    source: TableSource,
    path: Path,
    plan: Plan,
    generated: pl.Series | None,
    id_column: str,
) -> Path:
    """Stream the input again and write the kept rows with every column (``generated``: the
    ids made for an input without any, added as its first column)."""
    schema = source.schema
    if generated is not None:
        schema = schema.insert(0, pa.field(id_column, pa.string()))
    dup_idx = schema.get_field_index("dup_cluster")
    if dup_idx >= 0:
        schema = schema.set(dup_idx, pa.field("dup_cluster", pa.string()))
    rep = dict(
        zip(
            plan.rep_cluster["row"].to_list(), plan.rep_cluster["cluster_id"].to_list(), strict=True
        )
    )
    id_arrow = generated.to_arrow() if generated is not None else None
    offset = 0
    with ParquetSink(path, schema) as sink:
        # the next batches are read and decoded while this one is compressed
        for batch in read_ahead(source.iter_batches(), depth=2):
            lo, hi = offset, offset + batch.num_rows
            offset = hi
            mask = plan.keep[lo:hi]
            if not mask.any():
                continue
            table = pa.Table.from_batches([batch])
            if id_arrow is not None:
                table = table.add_column(
                    0, id_column, id_arrow.slice(lo, hi - lo).cast(pa.string())
                )
            if dup_idx >= 0:
                values = [rep.get(r) for r in range(lo, hi)]
                table = table.set_column(
                    table.schema.get_field_index("dup_cluster"),
                    "dup_cluster",
                    pa.array(values, type=pa.string()),
                )
            sink.write(table.filter(arrow_mask(mask)))
    return path


def diversity_of(
    openers: pl.DataFrame,
    source: TableSource | ArrowFilesSource,
    id_column: str,
    generated: pl.Series | None,
    plan: Plan,
    settings: DedupSettings,
) -> DiversityReport:
    """The diversity report of a dedup run: ``openers`` (per row) were computed by the
    signature tasks from the texts they already had, so the report never reads the texts
    again (it holds every row's opener, id and path)."""
    small = source.read_columns([c for c in (id_column, "taxonomy_path") if c in source.columns])
    ids = generated if generated is not None else small[id_column]
    base = openers.with_columns(ids.alias("id"))
    if "taxonomy_path" in small.columns:
        base = base.with_columns(small["taxonomy_path"])
    return diversity_from_openers(
        base, plan.clusters, None, id_column="id", opener_words=settings.opener_words
    )
