"""``assemble`` of a Parquet file counts the tokens of the file's rows (in file order, while
the rows are sorted) and looks each count up by the row's position: every shard row gets its
own text's count, also when the file is not in id order, a large row group is split over
several tasks and a curator-flagged row is dropped before the sort."""

from __future__ import annotations

import functools
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from builder.assemble import assemble, read_manifest
from builder.review.flags import append_flags
from builder.run.executor import LocalExecutor, TaskLog
from builder.tokens import count_tokens
from tests.support.assemble_data import make_config, make_rows

CONFIG = {"run.partition_rows": 10, "run.workers": 2, "output.shard_max_rows": 25}


def _input_file(tmp_path: Path, n: int) -> tuple[Path, list[str]]:
    """``n`` rows (random id order) in a Parquet file of 30-row groups: each group is bigger
    than ``partition_rows`` (10), so its rows are counted by several tasks."""
    rows = make_rows(n, seed=11)
    df = pl.DataFrame(rows)
    path = tmp_path / "clean.parquet"
    pq.write_table(df.to_arrow(), path, row_group_size=30)
    return path, df["id"].to_list()


def _shard_rows(run: Path) -> pl.DataFrame:
    manifest = read_manifest(run)
    return pl.concat([pl.read_parquet(run / s["path"]) for s in manifest["shards"]])


def test_counts_of_an_unsorted_file_land_in_their_rows_with_a_flagged_row_dropped(
    tmp_path: Path,
) -> None:
    path, ids = _input_file(tmp_path, 75)
    assert ids != sorted(ids)  # the file is not in id order: the sort moves rows
    flagged = ids[37]
    config = make_config(CONFIG)
    run = tmp_path / "run"
    run.mkdir()
    append_flags(run, [flagged], "flag", "off topic")
    log = TaskLog()
    mapper = functools.partial(LocalExecutor(config).map_tasks, where=log.add)
    result = assemble(path, None, run, config=config, mapper=mapper)

    docs = _shard_rows(run)
    assert docs["id"].to_list() == sorted(set(ids) - {flagged})
    assert "__assemble_row" not in docs.columns
    # each shard's counts are the recount of its own texts
    for shard in result.shards:
        part = pl.read_parquet(run / shard.path)
        assert part["n_tokens"].to_list() == count_tokens(part["text"].to_list())
    assert result.tokens == sum(count_tokens(docs["text"].to_list()))
    assert read_manifest(run)["counts"]["tokens"] == result.tokens
    rejected = pl.read_parquet(run / "rejected.parquet")
    assert rejected["id"].to_list() == [flagged]
    assert rejected["stage"].to_list() == ["review"]
    # 75 rows in groups of 30, 30, 15, split into tasks of at most 10 rows: 3 + 3 + 2
    assert log.to_dict()["count"] == 8


def test_a_parquet_file_gives_the_same_files_as_its_rows(tmp_path: Path) -> None:
    """Counting over the input file (the rows as a path) or over the sorted rows (the rows
    as a frame): the same shard and rejected bytes and the same manifest counts."""
    path, ids = _input_file(tmp_path, 60)
    config = make_config(CONFIG)
    runs = {}
    for name, source in (("file", path), ("frame", pl.read_parquet(path))):
        run = tmp_path / name
        run.mkdir()
        append_flags(run, [ids[5]], "flag", "dup")
        runs[name] = assemble(source, None, run, config=config, alongside=lambda n=name: n)
    file, frame = runs["file"], runs["frame"]
    assert file.alongside == "file" and frame.alongside == "frame"
    assert [s.sha256 for s in file.shards] == [s.sha256 for s in frame.shards]
    assert file.rejected_file.sha256 == frame.rejected_file.sha256
    assert file.manifest["counts"] == frame.manifest["counts"]
    assert file.documents == 59


def test_the_documents_own_counts_are_taken_when_every_row_has_one(tmp_path: Path) -> None:
    """``counted=True`` (the build: its filter stage counts every document it keeps): the
    file's own ``n_tokens`` land in their rows, flagged row dropped, no counting task; a
    file with a row without a count is counted as without ``counted``."""
    path, ids = _input_file(tmp_path, 75)
    frame = pl.read_parquet(path)
    # counts that are not the texts' (so the test sees which were taken): 1000 + position
    own = frame.with_columns(pl.int_range(1000, 1075, dtype=pl.Int64).alias("n_tokens"))
    pq.write_table(own.to_arrow(), path, row_group_size=30)
    config = make_config(CONFIG)
    runs = {}
    for name in ("counted", "missing"):
        run = tmp_path / name
        run.mkdir()
        append_flags(run, [ids[37]], "flag", "off topic")
        source = path
        if name == "missing":
            source = tmp_path / "missing.parquet"
            one_null = own.with_columns(
                pl.when(pl.col("id") == ids[3]).then(None).otherwise("n_tokens").alias("n_tokens")
            )
            pq.write_table(one_null.to_arrow(), source, row_group_size=30)
        log = TaskLog()
        mapper = functools.partial(LocalExecutor(config).map_tasks, where=log.add)
        runs[name] = (assemble(source, None, run, config=config, mapper=mapper, counted=True), log)
    result, log = runs["counted"]
    assert result.counted and log.to_dict()["count"] == 0
    docs = _shard_rows(tmp_path / "counted")
    expected = dict(zip(own["id"], own["n_tokens"], strict=True))
    assert docs["id"].to_list() == sorted(set(ids) - {ids[37]})
    assert docs["n_tokens"].to_list() == [expected[i] for i in docs["id"]]
    assert result.tokens == sum(expected[i] for i in docs["id"])
    result, log = runs["missing"]
    assert not result.counted and log.to_dict()["count"] == 8
    docs = _shard_rows(tmp_path / "missing")
    assert docs["n_tokens"].to_list() == count_tokens(docs["text"].to_list())
