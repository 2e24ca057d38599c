"""Assembly writes each shard row group by row group: the rows held at once are bounded by
``[output] row_group_rows``, not by the shard size, and the shards are the same bytes."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from builder.assemble import assemble
from tests.support.assemble_data import STATS, make_config, make_rejected, make_rows


def test_shards_are_written_one_row_group_at_a_time(tmp_path: Path) -> None:
    rows = make_rows(900, seed=3)
    rejected = make_rejected(rows, 50, seed=2)
    small = assemble(
        rows,
        rejected,
        tmp_path / "a",
        config=make_config({"output.shard_max_rows": 500, "output.row_group_rows": 40}),
        extra_manifest={"stats": STATS},
    )
    assert [s.rows for s in small.shards] == [500, 400]
    assert small.max_rows_held == 40  # one row group, never a whole shard of 500
    meta = pq.ParquetFile(tmp_path / "a" / small.shards[0].path).metadata
    assert meta.num_row_groups == 13 and meta.row_group(0).num_rows == 40
    # The same corpus held whole (one row group per shard) gives the same documents.
    whole = assemble(
        rows,
        rejected,
        tmp_path / "b",
        config=make_config({"output.shard_max_rows": 500, "output.row_group_rows": 500}),
        extra_manifest={"stats": STATS},
    )
    assert whole.max_rows_held == 500
    assert (whole.documents, whole.tokens) == (small.documents, small.tokens) == (900, small.tokens)
    assert whole.manifest["counts"] == small.manifest["counts"]
    assert [(s.first_id, s.last_id) for s in whole.shards] == [
        (s.first_id, s.last_id) for s in small.shards
    ]
    for a, b in zip(small.shards, whole.shards, strict=True):
        ta = pq.read_table(tmp_path / "a" / a.path)
        tb = pq.read_table(tmp_path / "b" / b.path)
        assert ta.equals(tb)


def test_a_parquet_input_read_in_record_batches_gives_the_same_files(tmp_path: Path) -> None:
    # A Parquet file is read a record batch of [run] partition_rows rows at a time with
    # pyarrow for the sort (not through Polars' streaming sink): the same bytes as a frame.
    from builder.assemble_inputs import to_lazy

    rows = make_rows(900, seed=5)
    rejected = make_rejected(rows, 30, seed=4)
    frame = to_lazy(rows).collect()
    source = tmp_path / "clean.parquet"
    frame.write_parquet(source, row_group_size=128)
    config = make_config({"run.partition_rows": 100, "output.shard_max_rows": 400})
    from_file = assemble(source, rejected, tmp_path / "a", config=config)
    from_frame = assemble(frame, rejected, tmp_path / "b", config=config)
    assert from_file.documents == from_frame.documents == 900
    assert [s.to_dict() for s in from_file.shards] == [s.to_dict() for s in from_frame.shards]
    assert len(from_file.shards) == 3
    assert from_file.rejected_file.sha256 == from_frame.rejected_file.sha256
    assert from_file.manifest["counts"] == from_frame.manifest["counts"]


def test_a_folder_of_parquet_parts_is_one_scan_and_batches_read_each_part_once(
    tmp_path: Path,
) -> None:
    """Parts of one schema are one multi-file scan: ``lazy_batches`` slices it without
    reading the parts before each slice again (a concatenation of per-file scans did, ~10x
    the CPU over 25 parts). Parts of different columns are still read, missing ones null."""
    import polars as pl

    from builder.assemble_inputs import to_lazy
    from builder.util.partitions import lazy_batches

    same = tmp_path / "same"
    same.mkdir()
    for i in range(5):
        pl.DataFrame({"id": [f"{i}-{j}" for j in range(10)], "n": list(range(10))}).write_parquet(
            same / f"part-{i:05d}.parquet"
        )
    lazy = to_lazy(same)
    assert lazy is not None
    plan = lazy.slice(20, 7).explain()
    assert plan.count("SCAN") == 1 and "UNION" not in plan  # one scan of the 5 files
    batches = [b["id"].to_list() for b in lazy_batches(lazy, 7)]
    assert sum(batches, []) == [f"{i}-{j}" for i in range(5) for j in range(10)]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pl.DataFrame({"id": ["a"], "n": [1]}).write_parquet(mixed / "part-00000.parquet")
    pl.DataFrame({"id": ["b"], "extra": ["x"]}).write_parquet(mixed / "part-00001.parquet")
    rows = to_lazy(mixed).collect().sort("id").to_dicts()  # type: ignore[union-attr]
    assert rows == [{"id": "a", "n": 1, "extra": None}, {"id": "b", "n": None, "extra": "x"}]
