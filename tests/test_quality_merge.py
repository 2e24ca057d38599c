"""``EmbeddedCorpus`` over a run whose embeddings follow the corpus order, as the stages
leave them (the quality stage embeds the rows it reads, later stages keep some of them, in
order): both sides are read side by side (``merge_in_order``), without the hash split; any
other run falls back to the split, and every pass yields the same rows and vectors either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

import builder.quality.buckets as buckets
from builder.config import CorpusConfig
from builder.quality.buckets import (
    DIVERSITY_COLUMNS,
    LENGTH,
    EmbeddedCorpus,
    streamed_semantic_clusters,
)
from builder.quality.hooks import quality_summary
from builder.run.paths import RunDir
from builder.stages.base import RunContext
from builder.stages.quality import embeddings_table
from builder.util.partitions import part_name, write_table
from tests.test_quality_streaming import _run_dir, assert_same_nodes, corpus


def _ordered_run(
    tmp_path: Path, frame: pl.DataFrame, x: np.ndarray, *, rejected: int = 0, parts: int = 5
) -> tuple[RunContext, Path]:
    """A run directory whose embeddings are the corpus's in its order, with ``rejected``
    more rows (documents a later stage dropped) spread between them, in ``parts``
    partitions of unequal sizes; the texts' lengths come with the embeddings."""
    ctx = RunContext(config=CorpusConfig(), paths=RunDir(tmp_path / "run"))
    tmp_path.mkdir(parents=True, exist_ok=True)
    clean = tmp_path / "clean.parquet"
    frame.write_parquet(clean, row_group_size=97)
    rng = np.random.default_rng(8)
    extra = rng.normal(size=(rejected, x.shape[1])).astype(np.float32)
    where = np.sort(rng.integers(0, frame.height + 1, size=rejected))
    ids = frame["id"].to_list()
    lengths = frame["text"].str.len_chars().to_list()
    rows = [(ids[i], x[i], lengths[i]) for i in range(frame.height)]
    for j, at in enumerate(reversed(where.tolist())):
        rows.insert(at, (f"gone-{j}", extra[j], 7))
    cuts = np.sort(rng.choice(np.arange(1, len(rows)), size=parts - 1, replace=False))
    emb_dir = ctx.paths.stage_dir("quality") / "embeddings"
    for k, chunk in enumerate(np.split(np.arange(len(rows)), cuts)):
        part = [rows[i] for i in chunk.tolist()]
        table = embeddings_table(
            pl.Series([r[0] for r in part]),
            np.stack([r[1] for r in part]),
            pl.Series([r[2] for r in part]),
        )
        write_table(table, emb_dir / part_name(k))
    return ctx, clean


def _made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _by_row(embedded: EmbeddedCorpus) -> tuple[dict[int, tuple], list[int]]:
    """Every row's fields and vector from one pass, and the size of each batch."""
    out: dict[int, tuple] = {}
    sizes = []
    for docs, vectors in embedded:
        assert vectors is not None
        sizes.append(docs.height)
        for i, row in enumerate(docs.iter_rows(named=True)):
            out[row.pop("_row")] = (row, vectors[i].tolist())
    return out, sizes


def _no_split(*args, **kwargs):
    raise AssertionError("the corpus was split by hash")


@pytest.mark.parametrize("text_lengths", [False, True])
def test_an_ordered_run_is_merged_and_yields_what_the_split_yields(
    tmp_path: Path, monkeypatch, text_lengths: bool
) -> None:
    frame, x = corpus(1300)
    lengths = frame["text"].str.len_chars()
    ctx, clean = _ordered_run(tmp_path / "a", frame, x, rejected=200)
    shuffled, clean_b = _run_dir(_made(tmp_path / "b"), frame, x, lengths)
    options = {"bucket_rows": 300, "text_lengths": text_lengths}
    with EmbeddedCorpus(shuffled, clean_b, DIVERSITY_COLUMNS, **options) as c:
        split, _ = _by_row(c)
    monkeypatch.setattr(buckets, "_split", _no_split)
    with EmbeddedCorpus(ctx, clean, DIVERSITY_COLUMNS, **options) as c:
        assert c.lengths_embedded is text_lengths
        passes = [_by_row(c) for _ in range(3)]
        assert c.max_rows_held <= 3 * 300  # a chunk and a read batch of each side
    for merged, sizes in passes:
        assert merged == split
        assert sizes == [300, 300, 300, 300, 100]  # consecutive chunks of the corpus
    assert sorted(passes[0][0]) == list(range(1300))
    if text_lengths:
        assert [passes[0][0][r][0][LENGTH] for r in range(1300)] == lengths.to_list()


def test_embeddings_out_of_order_fall_back_to_the_split(tmp_path: Path, monkeypatch) -> None:
    frame, x = corpus(900)
    ctx, clean = _ordered_run(tmp_path, frame, x, rejected=50, parts=3)
    # swap two neighbours in the corpus: its order is no longer the embeddings'
    swapped = pl.concat(
        [frame.slice(0, 400), frame.slice(401, 1), frame.slice(400, 1), frame.slice(402)]
    )
    swapped.write_parquet(clean)
    calls = []
    real = buckets._split
    monkeypatch.setattr(buckets, "_split", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    with EmbeddedCorpus(ctx, clean, DIVERSITY_COLUMNS, bucket_rows=200) as embedded:
        rows, _ = _by_row(embedded)
    assert len(calls) == 2  # documents and embeddings, split by hash
    by_id = {f["id"]: v for f, v in rows.values()}
    assert len(by_id) == 900
    for i, doc in enumerate(frame["id"].to_list()):
        assert by_id[doc] == x[i].tolist()


def test_a_document_without_embedding_falls_back(tmp_path: Path) -> None:
    frame, x = corpus(700)
    ctx, clean = _ordered_run(tmp_path, frame, x, parts=2)
    pl.concat([frame, frame.slice(0, 1).with_columns(pl.lit("doc-new").alias("id"))]).write_parquet(
        clean
    )
    with EmbeddedCorpus(ctx, clean, DIVERSITY_COLUMNS, bucket_rows=200) as embedded:
        batches = list(embedded)
    missing = [v for docs, v in batches if "doc-new" in docs["id"].to_list()]
    assert missing == [None]  # that bucket has no vectors; the others keep theirs
    assert sum(v is not None for _, v in batches) == len(batches) - 1


def test_semantic_dedup_and_the_summary_agree_on_both_paths(tmp_path: Path) -> None:
    frame, x = corpus(1500, dim=32, seed=11)
    for p in range(20):  # planted near-duplicate pairs
        x[2 * p + 1] = x[2 * p] + np.float32(0.001)
        x[2 * p + 1] /= np.linalg.norm(x[2 * p + 1])
    lengths = frame["text"].str.len_chars()
    ordered, clean_a = _ordered_run(tmp_path / "a", frame, x, rejected=300)
    shuffled, clean_b = _run_dir(_made(tmp_path / "b"), frame, x, lengths)
    results = [
        streamed_semantic_clusters(
            ctx, clean, threshold=0.95, cluster_size=100, sample_rows=400, bucket_rows=300
        )
        for ctx, clean in ((ordered, clean_a), (shuffled, clean_b))
    ]
    assert results[0] is not None and results[1] is not None
    assert results[0].removed == results[1].removed >= 20
    assert results[0].clusters.equals(results[1].clusters)
    summaries = [quality_summary(ordered, clean_a), quality_summary(shuffled, clean_b)]
    assert summaries[0] is not None and summaries[1] is not None
    assert_same_nodes(summaries[0].nodes, summaries[1].nodes)


def test_fixed_size_vectors_fall_back_to_the_split(tmp_path: Path) -> None:
    """Embeddings written as fixed-size lists (another writer's) are read by the split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from builder.util.partitions import list_parts

    frame, x = corpus(600)
    ctx, clean = _ordered_run(tmp_path, frame, x, rejected=10, parts=2)
    for part in list_parts(ctx.paths.stage_dir("quality") / "embeddings"):
        table = pq.read_table(part)
        values = table.column("embedding").combine_chunks().values
        fixed = pa.FixedSizeListArray.from_arrays(values, x.shape[1])
        write_table(table.set_column(1, "embedding", fixed), part)
    with EmbeddedCorpus(ctx, clean, DIVERSITY_COLUMNS, bucket_rows=200) as embedded:
        rows, sizes = _by_row(embedded)
    assert sorted(rows) == list(range(600)) and len(sizes) == 3
    for row, (_fields, vector) in rows.items():
        assert vector == x[row].tolist()
