"""``diversity_report`` reads its rows batch by batch: the same tables as the all-at-once
computation (``diversity_from_openers``), holding about one batch of rows."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from builder.diversity import diversity_from_openers, diversity_report, opener_exprs
from tests.support.assemble_data import make_rows

N_ROWS = 600


@pytest.fixture(scope="module")
def frames() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    rows = pl.DataFrame(make_rows(N_ROWS, seed=5)).select("id", "text", "taxonomy_path")
    ids = rows["id"].to_list()
    clusters = pl.DataFrame(
        {
            "id": ids[:60],
            "cluster_id": [i // 3 for i in range(60)],
            "kind": ["exact" if i % 2 else "near" for i in range(60)],
            "removed": [i % 3 != 0 for i in range(60)],
        }
    )
    hits = pl.DataFrame({"id": ids[100:130] + ids[100:110], "benchmark": ["b"] * 40})
    return rows, clusters, hits


def test_streamed_tables_equal_the_whole_computation(frames, tmp_path: Path) -> None:
    rows, clusters, hits = frames
    whole = diversity_from_openers(
        rows.select("id", "taxonomy_path", *opener_exprs("text", 5)), clusters, hits
    )
    streamed = diversity_report(rows.lazy(), clusters, hits, batch_rows=40, spill_dir=tmp_path)
    assert streamed.nodes.equals(whole.nodes)
    assert streamed.openers.equals(whole.openers)
    assert streamed.cluster_sizes.equals(whole.cluster_sizes)
    assert streamed.summary == whole.summary
    assert whole.summary["opener_repeat_rate"] > 0  # repeated openers are in the data
    assert whole.summary["contaminated"] == 30 and whole.summary["exact_dups"] > 0
    assert not list(tmp_path.iterdir())  # the spill files are removed


def test_streamed_report_holds_a_bounded_number_of_rows(frames, tmp_path: Path) -> None:
    rows, clusters, hits = frames
    depth = int(rows["taxonomy_path"].str.count_matches("/").max()) + 2  # nodes per row
    report = diversity_report(rows.lazy(), clusters, hits, batch_rows=40, spill_dir=tmp_path)
    # A batch expanded over its nodes, or one opener bucket: never the corpus.
    assert 0 < report.max_rows_held <= 40 * depth
    assert report.max_rows_held < N_ROWS
    without_ids = diversity_report(rows.drop("id").lazy(), batch_rows=40, spill_dir=tmp_path)
    assert without_ids.summary["docs"] == N_ROWS
