"""Writing dedup's results: the kept rows (streamed again from the input) and per-node rates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from builder.dedup.plan import Plan
from builder.diversity import node_rates
from builder.io_tables import ParquetSink, TableSource, arrow_mask
from builder.util.ahead import read_ahead


def with_dup_cluster(frame: pl.DataFrame, plan: Plan, offset: int = 0) -> pl.DataFrame:
    """Fill ``dup_cluster`` of kept rows (cluster id of representatives, else null)."""
    if "dup_cluster" not in frame.columns:
        return frame
    rows = pl.DataFrame({"row": np.arange(offset, offset + frame.height, dtype=np.int64)})
    joined = rows.join(plan.rep_cluster, on="row", how="left", maintain_order="left")
    return frame.with_columns(joined["cluster_id"].alias("dup_cluster"))


def node_dup_rates(paths: pl.Series | None, plan: Plan, ids: pl.Series) -> pl.DataFrame | None:
    """Duplicate rates per taxonomy node, from each row's taxonomy_path."""
    if paths is None:
        return None
    n = len(ids)
    exact = np.zeros(n, dtype=bool)
    near = np.zeros(n, dtype=bool)
    if plan.removed.height:
        rows = pl.DataFrame({"id": ids, "_row": np.arange(n)}).join(
            plan.removed.select("id", "kind"), on="id", how="inner"
        )
        r = rows["_row"].to_numpy()
        k = rows["kind"].to_numpy()
        exact[r[k == "exact"]] = True
        near[r[k == "near"]] = True
    frame = pl.DataFrame(
        {"taxonomy_path": paths, "exact_dup": exact, "near_dup": near, "dup": exact | near}
    )
    return node_rates(frame, ["exact_dup", "near_dup", "dup"])


# -- Public API -------------------------------------------------------------------------------


def plan_kept_rows(plan: Plan) -> Plan:
    """The plan with ``rep_cluster`` rows renumbered to positions among kept rows."""
    kept_pos = np.cumsum(plan.keep) - 1
    rep = plan.rep_cluster.with_columns(
        pl.Series("row", kept_pos[plan.rep_cluster["row"].to_numpy()], dtype=pl.Int64)
    )
    return Plan(
        plan.keep, plan.clusters, plan.removed, rep, plan.candidate_pairs, plan.verified_pairs
    )


def write_kept(
    source: TableSource,
    path: Path,
    plan: Plan,
    ids: pl.Series,
    has_ids: bool,
    id_column: str,
) -> Path:
    """Stream the input again and write the kept rows with every column."""
    schema = source.schema
    if not has_ids:
        schema = schema.insert(0, pa.field(id_column, pa.string()))
    dup_idx = schema.get_field_index("dup_cluster")
    if dup_idx >= 0:
        schema = schema.set(dup_idx, pa.field("dup_cluster", pa.string()))
    rep = dict(
        zip(
            plan.rep_cluster["row"].to_list(), plan.rep_cluster["cluster_id"].to_list(), strict=True
        )
    )
    id_arrow = ids.to_arrow() if not has_ids else None
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
