"""The report reads documents partition by partition (builder.report_data.summarize_documents):
the same report whatever the batch size, and never more than about one batch of rows held."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.assemble import assemble
from builder.report import document_facts, opener_table, summarize_documents, write_report
from builder.report_data import counted_median, nearest_quantile
from tests.support.assemble_data import STATS, make_config, make_rejected, make_rows, taxonomy

N_ROWS = 700


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = make_rows(N_ROWS, seed=11)
    run = tmp_path_factory.mktemp("stream") / "run"
    cfg = make_config({"output.shard_max_rows": 200})
    assemble(
        rows, make_rejected(rows, 120, seed=4), run, config=cfg, extra_manifest={"stats": STATS}
    )
    return run


def _report(run: Path, batch_rows: int) -> dict[str, bytes]:
    path = write_report(run, taxonomy=taxonomy(), batch_rows=batch_rows)
    out = {"report.html": path.read_bytes()}
    out.update({p.name: p.read_bytes() for p in sorted((run / "report").glob("*.png"))})
    return out


def test_report_is_the_same_for_any_batch_size(run: Path) -> None:
    whole = _report(run, 100_000)
    small = _report(run, 7)
    assert set(whole) == set(small) and len(whole) >= 6
    for name in whole:
        assert whole[name] == small[name], name
    assert b"median tokens" in whole["report.html"]


def test_summary_holds_about_one_batch_and_matches_per_document_facts(run: Path) -> None:
    docs = pl.scan_parquet(sorted((run / "documents").glob("*.parquet")))
    summary = summarize_documents(docs, 4, batch_rows=50, spill_dir=run)
    facts = document_facts(docs, 4)
    assert summary.documents == facts.height == N_ROWS
    # Bounded: one batch, or one opener bucket, never the corpus.
    assert 0 < summary.max_rows_held <= 50
    assert summary.tokens == int(facts["n_tokens"].sum())
    assert summary.distinct_openers == facts["opener"].n_unique()
    assert opener_table(summary).equals(opener_table(facts))
    by_kind = (
        facts.group_by("kind")
        .agg(
            pl.len().alias("documents"),
            pl.col("n_tokens").sum().alias("tokens"),
            pl.col("n_tokens").median().alias("median tokens"),
            pl.col("n_tokens").quantile(0.05).alias("p5 tokens"),
            pl.col("n_tokens").quantile(0.95).alias("p95 tokens"),
            pl.col("words").median().alias("median words"),
        )
        .sort("kind")
    )
    assert summary.by_kind().equals(by_kind)
    per_path = facts.group_by("taxonomy_path").agg(pl.len(), pl.col("n_tokens").sum())
    assert summary.paths.sort("taxonomy_path").equals(per_path.sort("taxonomy_path"))
    assert not list(run.glob(".report-openers-*"))  # the spill directory is removed


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=80),
    st.sampled_from([0.0, 0.05, 0.3, 0.5, 0.95, 0.995, 1.0]),
)
def test_counted_quantiles_are_polars_quantiles(values: list[int], q: float) -> None:
    counts = pl.Series(values).value_counts().sort("")
    distinct, n = counts[""].to_list(), counts["count"].to_list()
    assert nearest_quantile(distinct, n, q) == pl.Series(values).quantile(q)
    assert counted_median(distinct, n) == pl.Series(values).median()


def test_lazy_batches_hold_one_slice_and_keep_the_order(tmp_path: Path) -> None:
    """The report's reader: every row once, in order, never more than ``batch_rows`` at a
    time, over several Parquet files (a scan of shards)."""
    from builder.util.partitions import lazy_batches

    frame = pl.DataFrame({"id": [f"d{i:04d}" for i in range(1000)], "n": list(range(1000))})
    for k in range(3):
        frame.slice(k * 400, 400).write_parquet(tmp_path / f"part-{k}.parquet", row_group_size=64)
    lazy = pl.concat(
        [pl.scan_parquet(tmp_path / f"part-{k}.parquet") for k in range(3)], how="diagonal_relaxed"
    )
    sizes = []
    got = []
    for batch in lazy_batches(lazy, 150):
        sizes.append(batch.height)
        got += batch["n"].to_list()
    assert got == list(range(1000))
    assert max(sizes) == 150 and len(sizes) == 7
