"""The passes that join the corpus with its embeddings hold bounded rows, whatever the
corpus size: counted rows (``max_rows_held``) under tiny read, bucket and group sizes, with
results equal to the unbounded ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from builder.quality.buckets import LENGTH, EmbeddedCorpus, streamed_semantic_clusters
from builder.quality.metrics import DiversityAccumulator
from tests.test_quality_streaming import _run_dir, _semantic_run, assert_same_nodes, corpus


def test_length_batches_never_carry_the_texts(tmp_path: Path) -> None:
    frame, x = corpus(900)
    ctx, clean = _run_dir(tmp_path, frame, x)
    lengths = frame["text"].str.len_chars().to_list()
    with EmbeddedCorpus(
        ctx, clean, ("id", "text"), bucket_rows=200, read_rows=70, text_lengths=True
    ) as embedded:
        seen = 0
        for docs, vectors in embedded:
            assert "text" not in docs.columns
            rows = docs["_row"].to_list()
            assert docs[LENGTH].to_list() == [lengths[r] for r in rows]
            assert vectors is not None and np.array_equal(vectors, x[rows])
            seen += docs.height
        assert seen == 900
        # buckets hold ~200 rows (a hash split: some more), reads 70
        assert 70 <= embedded.max_rows_held <= 2 * 200


def test_text_groups_read_once_and_hold_one_group(tmp_path: Path) -> None:
    frame, x = corpus(1000)
    ctx, clean = _run_dir(tmp_path, frame, x)
    texts = frame["text"].to_list()
    groups = [set(range(0, 1000, 7)), set(), {3, 999, 500}, set(range(100, 160))]
    with EmbeddedCorpus(ctx, clean, ("id",), bucket_rows=300, read_rows=50) as embedded:
        got = list(embedded.text_groups(groups))
        assert embedded.max_rows_held <= max(50, max(len(g) for g in groups))
    assert [set(g) for g in got] == groups
    for group, found in zip(groups, got, strict=True):
        assert found == {row: texts[row] for row in group}


def test_node_samples_fetched_in_bounded_groups_give_the_same_metrics(tmp_path: Path) -> None:
    """The summary's way: the accumulator keeps row numbers, the texts of each group of
    nodes come from one pass over the corpus (``text_groups``), groups of <= 60 rows."""
    frame, x = corpus(1200)
    ctx, clean = _run_dir(tmp_path, frame, x)
    kept = DiversityAccumulator(sample=40)
    rows = frame.with_row_index("_row")
    for start in range(0, 1200, 300):
        kept.add(rows.slice(start, 300), x[start : start + 300])
    lean = DiversityAccumulator(sample=40, keep_texts=False)
    asked: list[int] = []
    with EmbeddedCorpus(
        ctx, clean, ("id", "taxonomy_path", "discipline"), bucket_rows=250, read_rows=100
    ) as embedded:
        for docs, vectors in embedded:
            assert "text" not in docs.columns
            lean.add(docs, vectors)

        def groups(wanted: list[set[int]]):
            asked.extend(len(w) for w in wanted)
            return embedded.text_groups(wanted)

        nodes = lean.nodes(groups=groups, batch_rows=60)
        held = embedded.max_rows_held
    assert_same_nodes(nodes, kept.nodes())
    assert len(asked) > 3 and max(asked) <= 60
    assert held <= 2 * 250  # a bucket (hash split), never the 1,200-row corpus


def test_semantic_dedup_holds_no_texts_and_a_bounded_bucket(tmp_path: Path, monkeypatch) -> None:
    """Above the k-means sample: same duplicates as with large buckets, while every read
    and bucket held a bounded number of rows."""
    import builder.quality.buckets as buckets

    ctx, kept, ids, _x = _semantic_run(tmp_path, 3000, 30)
    big = streamed_semantic_clusters(
        ctx, kept, threshold=0.95, cluster_size=100, sample_rows=400, bucket_rows=5000
    )
    held: list[int] = []
    real = buckets.EmbeddedCorpus

    class Counting(real):  # type: ignore[misc, valid-type]
        def __exit__(self, *exc):
            held.append(self.max_rows_held)
            return super().__exit__(*exc)

    monkeypatch.setattr(buckets, "EmbeddedCorpus", Counting)
    monkeypatch.setattr(buckets, "READ_ROWS", 64)
    small = streamed_semantic_clusters(
        ctx, kept, threshold=0.95, cluster_size=100, sample_rows=400, bucket_rows=300
    )
    assert big is not None and small is not None
    assert small.clusters.equals(big.clusters)
    assert small.removed == big.removed == 30
    assert len(held) == 1 and 64 <= held[0] <= 2 * 300


def test_semdedup_stage_writes_its_survivors_a_batch_at_a_time(tmp_path: Path, monkeypatch) -> None:
    """``corpus semdedup`` through the stage: the kept file equals the input rows minus the
    removed ones, written READ_ROWS rows at a time."""
    import builder.quality.buckets as buckets
    from builder.stages.quality import SemDedupStage

    ctx, kept, ids, _x = _semantic_run(tmp_path, 700, 10)
    dedup = ctx.paths.stage_dir("dedup")
    dedup.mkdir(parents=True, exist_ok=True)
    frame = pl.read_parquet(kept).with_columns(pl.lit(None, pl.String).alias("dup_cluster"))
    frame.write_parquet(dedup / "kept.parquet", row_group_size=100)
    from builder.quality.semdedup import CLUSTERS_SCHEMA

    pl.DataFrame(schema=CLUSTERS_SCHEMA).write_parquet(dedup / "clusters.parquet")
    pl.DataFrame(schema={"id": pl.String, "stage": pl.String, "reason": pl.String}).write_parquet(
        dedup / "removed.parquet"
    )
    ctx.config.dedup.semantic = True
    ctx.config.dedup.semantic_threshold = 0.95
    ctx.config.dedup.semantic_cluster_size = 100
    monkeypatch.setattr(buckets, "READ_ROWS", 50)
    stage = SemDedupStage()
    counters = stage.run(ctx)
    out = pl.read_parquet(ctx.paths.stage_dir("semdedup") / "kept.parquet")
    gone = {ids[2 * p + 1] for p in range(10)}
    assert counters["stats"]["removed"] == 10
    assert out["id"].to_list() == [i for i in frame["id"].to_list() if i not in gone]
    reps = out.filter(pl.col("id").is_in([ids[2 * p] for p in range(10)]))
    assert reps["dup_cluster"].to_list() == [f"sem-{i}" for i in reps["id"].to_list()]
    assert stage.max_rows_held == 50


def test_grams_summed_again_a_few_nodes_at_a_time_give_the_same_vendi() -> None:
    """``gram_nodes``: no Gram during ``add``; ``nodes`` sums them again over the same
    batches, at most 2 nodes' Grams at once, and gets the same scores (each node's rows
    are gathered over the batches before they are multiplied: other float sums, the same
    scores to the 4 places they are rounded to, within one unit)."""
    frame, x = corpus(900)
    lean, ours = _lean_nodes_equal_whole(frame, x, batch=150)
    assert ours.height == 8 and ours["vendi"].null_count() == 0
    assert lean.max_grams_held == 2
    with pytest.raises(ValueError, match="batches"):
        lean.nodes()


def _lean_nodes_equal_whole(
    frame: pl.DataFrame, x: np.ndarray, *, batch: int
) -> tuple[DiversityAccumulator, pl.DataFrame]:
    """The accumulator with ``gram_nodes=2`` over ``batch``-row batches and its nodes,
    checked against the one summing every Gram during ``add`` (Vendi to 1e-4)."""
    rows = frame.with_row_index("_row")
    batches = [(rows.slice(s, batch), x[s : s + batch]) for s in range(0, frame.height, batch)]
    whole = DiversityAccumulator(sample=30)
    lean = DiversityAccumulator(sample=30, gram_nodes=2)
    for docs, vectors in batches:
        whole.add(docs, vectors)
        lean.add(docs, vectors)
    ours = lean.nodes(batches=lambda: iter(batches))
    theirs = whole.nodes()
    assert ours.drop("vendi").equals(theirs.drop("vendi"))
    assert ours["vendi"].to_numpy() == pytest.approx(theirs["vendi"].to_numpy(), abs=1.01e-4)
    return lean, ours


def test_nodes_with_fewer_documents_than_dimensions_get_the_same_vendi_from_their_kernel() -> None:
    """A node of n < d documents is measured on its n x n kernel (its rows kept over the
    batches, no d x d Gram): the same scores as the Grams summed during ``add``, and the
    passes' budget of 2 Grams then holds more than 2 such nodes."""
    frame, x = corpus(300, dim=64)
    # many small nodes: 30 topics of ~10 documents, fewer than the 64 dimensions
    frame = frame.with_columns(
        (pl.lit("math/t") + (pl.int_range(300) % 30).cast(pl.String)).alias("taxonomy_path")
    )
    lean, ours = _lean_nodes_equal_whole(frame, x, batch=70)
    assert ours.height == 32 and ours["vendi"].null_count() == 0  # 30 topics, math, (all)
    assert lean.max_grams_held > 2  # kernels of ~10 x 10: cheaper than a 64 x 64 Gram each


def test_clusters_go_to_buckets_by_size_not_by_label() -> None:
    """Semantic dedup's buckets hold whole clusters; sized from the k-means sample, the
    largest first into the emptiest bucket, no bucket passes the mean by more than one
    cluster, where ``label % buckets`` piled the large ones together."""
    from builder.quality.buckets import balanced_buckets

    rng = np.random.default_rng(2)
    counts = np.where(np.arange(400) % 8 == 0, 200, 1) * rng.integers(1, 4, size=400)
    buckets = 8
    got = balanced_buckets(counts, buckets)
    assert got.min() >= 0 and got.max() < buckets and len(got) == len(counts)
    loads = np.bincount(got, weights=counts, minlength=buckets)
    assert loads.max() <= counts.sum() / buckets + counts.max()
    by_label = np.bincount(np.arange(400) % buckets, weights=counts, minlength=buckets)
    assert loads.max() < by_label.max() / 4  # every large cluster had label % 8 == 0
    assert np.array_equal(balanced_buckets(counts, buckets), got)  # deterministic
    assert balanced_buckets(np.array([5, 0, 3]), 1).tolist() == [0, 0, 0]
