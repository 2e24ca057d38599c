"""Ids read a batch at a time (``builder.dedup.rowids``): the same verdicts as the whole column,
and dedup/decontam over files never read a column of the whole table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from builder.dedup.plan import check_ids
from builder.dedup.rowids import IdCheck, column_batches, take
from builder.errors import InputError
from builder.io_tables import TableSource, open_table


def _source(tmp_path: Path, ids: list[str | None], row_group: int = 7) -> TableSource:
    path = tmp_path / "t.parquet"
    pq.write_table(
        pa.table({"id": ids, "text": [f"text {i}" for i in range(len(ids))]}),
        path,
        row_group_size=row_group,
    )
    return open_table(path, text_column="text", workdir=tmp_path, partition_size=1000)


def _verdict(check: object) -> str | None:
    try:
        check()  # type: ignore[operator]
    except InputError as exc:
        return exc.problem.message
    return None


def _batched_verdict(
    ids: list[str | None], batch: int, hasher=None, budget: int | None = None
) -> str | None:
    series = pl.Series("id", ids, dtype=pl.String)

    def batches():
        return (series.slice(lo, batch) for lo in range(0, len(series), batch))

    def run() -> None:
        check = (
            IdCheck("id", None, budget_rows=budget)
            if hasher is None
            else IdCheck("id", None, hasher, budget_rows=budget)
        )
        for b in batches():
            check.add(b)
        check.finish(batches)

    return _verdict(run)


CASES = {
    "unique": [f"d{i}" for i in range(40)],
    "repeat across batches": [f"d{i}" for i in range(30)] + ["d3"] + [f"e{i}" for i in range(9)],
    "two repeats": ["a", "b", "c", "b", "d", "a", "e", "b"],
    "empty ids": ["a", None, "c", None, "d"],
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("batch", [1, 3, 1000])
@pytest.mark.parametrize("budget", [None, 2])
def test_id_check_over_batches_agrees_with_the_whole_column(
    case: str, batch: int, budget: int | None
) -> None:
    """Present and unique, or the error naming the first repeated id and two of its rows,
    whether the hashes stay in memory or spill (a budget of 2)."""
    ids = CASES[case]
    whole = _verdict(lambda: check_ids(pl.Series("id", ids), column="id", file=None))
    got = _batched_verdict(ids, batch, budget=budget)
    assert (got is None) == (whole is None)
    if case == "empty ids":
        assert got == "id column 'id' is empty in 2 row(s), first at row 1"
    if case == "two repeats":
        assert got == "id column 'id' has 5 rows with repeated ids (e.g. 'a' at rows 0 and 5)"
    if case == "repeat across batches":
        assert got == "id column 'id' has 2 rows with repeated ids (e.g. 'd3' at rows 3 and 30)"


def test_equal_hashes_of_different_ids_are_not_a_repeat() -> None:
    """Every id given one hash: the exact comparison on the second pass decides."""

    def same(ids: pl.Series) -> np.ndarray:
        return np.full(len(ids), 42, dtype=np.uint64)

    assert _batched_verdict(CASES["unique"], 4, same) is None
    assert _batched_verdict(CASES["unique"], 4, same, budget=3) is None
    assert _batched_verdict(CASES["two repeats"], 4, same) == (
        "id column 'id' has 5 rows with repeated ids (e.g. 'a' at rows 0 and 5)"
    )


def test_take_gives_the_values_at_any_rows_reading_a_batch_at_a_time(
    tmp_path: Path, monkeypatch
) -> None:
    ids = [f"d{i}" for i in range(50)]
    source = _source(tmp_path, ids)
    seen = _no_whole_columns(monkeypatch)
    rows = np.array([49, 0, 17, 17, 8, 7, 33])
    assert take(source, ["id"], rows)["id"].to_list() == [ids[r] for r in rows]
    assert seen and max(seen) <= 8
    assert take(source, ["id"], np.array([3]))["id"].to_list() == ["d3"]
    assert take(source, ["id"], np.zeros(0, dtype=np.int64))["id"].to_list() == []
    with pytest.raises(IndexError):
        take(source, ["id"], np.array([50]))
    assert sum(len(b) for b in column_batches(source, "id")) == 50


def _no_whole_columns(monkeypatch) -> list[int]:
    """Forbid reading any column of a whole table; record the rows of every batch read
    with the ids (``BATCH_ROWS`` = 8)."""
    from builder.dedup import rowids
    from builder.dedup.source import ArrowFilesSource

    def whole(self, columns):
        raise AssertionError(f"read a whole column: {columns}")

    seen: list[int] = []
    for cls in (TableSource, ArrowFilesSource):
        monkeypatch.setattr(cls, "read_columns", whole)
        batches = cls.iter_batches

        def counted(self, columns=None, *, _batches=batches, **kwargs):
            for batch in _batches(self, columns, **kwargs):
                if "id" in (columns or []):
                    seen.append(batch.num_rows)
                yield batch

        monkeypatch.setattr(cls, "iter_batches", counted)
    monkeypatch.setattr(rowids, "BATCH_ROWS", 8)
    return seen


@pytest.mark.parametrize("by_id", [False, True], ids=["scan", "hits by id"])
def test_decontam_files_read_the_ids_a_batch_at_a_time(
    tmp_path: Path, monkeypatch, by_id: bool
) -> None:
    """Both ways (its own scan, or hits a scan made before, by id): the same files, and
    never more than a batch of ids read at once."""
    from builder import decontam

    bench = tmp_path / "bench.jsonl"
    secret = "the quick brown fox jumps over the lazy dog near the quiet river bank today"
    bench.write_text(json.dumps({"question": secret}) + "\n")
    n = 50
    texts = [f"document {i} about topic {i % 7} " * 3 for i in range(n)]
    texts[3] = f"intro {secret} outro"
    texts[41] = f"{secret} again"
    src = tmp_path / "in.parquet"
    table = pa.table({"id": [f"d{i}" for i in range(n)], "text": texts})
    pq.write_table(table, src, row_group_size=16)
    want = decontam.decontaminate_files(src, [bench], tmp_path / "want", workers=1)
    hits = want.hits if by_id else None
    if by_id:  # hits of ids this input lacks are ignored
        extra = want.hits.head(1).with_columns(pl.lit("elsewhere").alias("id"))
        hits = pl.concat([want.hits, extra])
    seen = _no_whole_columns(monkeypatch)
    got = decontam.decontaminate_files(src, [bench], tmp_path / "got", workers=1, hits=hits)
    assert seen and max(seen) <= 8
    assert got.hits.equals(want.hits)
    assert got.contaminated["id"].sort().to_list() == ["d3", "d41"]
    for name in ("clean.parquet", "rejected.parquet", "hits.parquet"):
        assert pl.read_parquet(tmp_path / "got" / name).equals(
            pl.read_parquet(tmp_path / "want" / name)
        )

    dup = tmp_path / "dup.parquet"
    pq.write_table(
        table.set_column(0, "id", pa.array(["d0", *table["id"][1:-1].to_pylist(), "d0"])), dup
    )
    with pytest.raises(InputError, match=r"repeated ids \(e.g. 'd0' at rows 0 and 49\)"):
        decontam.decontaminate_files(dup, [bench], tmp_path / "dup", workers=1, hits=hits)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_dedup_files_never_read_a_column_of_the_whole_input(
    tmp_path: Path, monkeypatch, fmt: str
) -> None:
    """Ids checked and named a batch at a time, rates per node from a batch of paths at a
    time: the same kept rows, clusters, removals and node rates as the table in memory."""
    from builder.dedup import dedup_files, dedup_table
    from builder.settings.dedup import DedupSettings
    from tests.support.synthetic import synthetic_corpus

    corpus = synthetic_corpus(90, seed=3, exact_frac=0.15, near_frac=0.2, words=(60, 90))
    n = corpus.height
    corpus = corpus.with_columns(
        pl.Series(
            "taxonomy_path", [["math", "algebra", "math", "physics"][i % 4] for i in range(n)]
        ),
        pl.Series("verified", [[True, False, None][i % 3] for i in range(n)], dtype=pl.Boolean),
    )
    src = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        corpus.write_parquet(src, row_group_size=16)
    else:
        corpus.write_ndjson(src)
    settings = DedupSettings()
    want = dedup_table(corpus, settings, workers=1)
    assert want.removed.height >= 10 and set(want.removed["kind"]) == {"exact", "near"}
    seen = _no_whole_columns(monkeypatch)
    got = dedup_files(src, tmp_path / "out", settings, workers=1)
    assert seen and max(seen) <= 8 and sum(seen) >= 2 * n  # checked, then named
    assert got.clusters.equals(want.clusters)
    assert got.removed.equals(want.removed)
    assert pl.read_parquet(tmp_path / "out" / "kept.parquet").equals(want.kept)
    assert got.nodes is not None and got.nodes.equals(want.nodes)
