"""The diversity summary streams the corpus: ``DiversityAccumulator`` over batches in any
order equals ``node_diversity`` / ``embedding_map`` of the whole corpus, and
``corpus_with_embeddings`` hands out bounded hash buckets that cover every row once."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from builder.config import CorpusConfig
from builder.quality.buckets import (
    DIVERSITY_COLUMNS,
    EmbeddedCorpus,
    streamed_semantic_clusters,
)
from builder.quality.hooks import quality_summary
from builder.quality.metrics import (
    DiversityAccumulator,
    compression_ratio,
    distinct_n,
    embedding_map,
    id_key,
    mean_similarity,
    node_diversity,
    vendi_score,
)
from builder.quality.semdedup import semantic_clusters
from builder.run.paths import RunDir
from builder.stages.base import RunContext
from builder.stages.quality import EMBEDDINGS_SCHEMA, embeddings_table
from builder.util.partitions import part_name, write_table

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi".split()
PATHS = ["math/algebra/groups", "math/algebra/rings", "math/calculus", "cs/algorithms", "cs"]


#: The embeddings of runs before they carried the texts' lengths.
OLD_EMBEDDINGS_SCHEMA = pa.schema(
    [pa.field("id", pa.string()), pa.field("embedding", pa.list_(pa.float32()))]
)


def corpus(n: int, dim: int = 16, seed: int = 5) -> tuple[pl.DataFrame, np.ndarray]:
    rng = random.Random(seed)
    frame = pl.DataFrame(
        {
            "id": [f"doc-{i:05d}" for i in range(n)],
            "text": [" ".join(rng.choices(WORDS, k=rng.randint(5, 40))) for _ in range(n)],
            "taxonomy_path": [rng.choice(PATHS) for _ in range(n)],
            "discipline": [None if i % 50 == 0 else "math" for i in range(n)],
        }
    )
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return frame, x / np.linalg.norm(x, axis=1, keepdims=True)


def assert_same_nodes(ours: pl.DataFrame, whole: pl.DataFrame) -> None:
    assert ours.select("node", "depth", "docs").equals(whole.select("node", "depth", "docs"))
    for column in ("compression_ratio", "distinct_1", "distinct_2", "distinct_3", "distinct_4"):
        assert ours[column].to_list() == whole[column].to_list(), column
    for column in ("mean_similarity", "vendi"):  # rounded to 4 places; summation order differs
        a, b = ours[column].to_numpy(), whole[column].to_numpy()
        assert np.array_equal(np.isnan(a), np.isnan(b)), column
        assert a[~np.isnan(a)] == pytest.approx(b[~np.isnan(b)], abs=2e-4)


def test_batches_in_any_order_give_the_whole_corpus_metrics() -> None:
    frame, x = corpus(1200)
    # a small sample (40 per node, 100 on the map) so that the samples really are chosen
    whole = node_diversity(frame, x, sample=40)
    whole_map = embedding_map(
        x, frame["discipline"].fill_null("?").to_list(), frame["id"], limit=100
    )
    acc = DiversityAccumulator(sample=40, map_limit=100)
    rows = frame.with_row_index("_row")
    order = list(range(0, 1200, 100))
    random.Random(1).shuffle(order)
    for start in order:
        acc.add(rows.slice(start, 100), x[start : start + 100])
    assert_same_nodes(acc.nodes(), whole)
    # the corpus node, from the metric functions themselves (not the accumulator)
    keys = sorted(range(1200), key=lambda i: id_key(frame["id"][i]))[:40]
    some = [frame["text"][i] for i in sorted(keys)]
    corpus_node = whole.filter(pl.col("node") == "(all)").to_dicts()[0]
    assert corpus_node["docs"] == 1200
    assert corpus_node["compression_ratio"] == compression_ratio(some)
    assert corpus_node["distinct_2"] == distinct_n(some, 2)
    assert corpus_node["mean_similarity"] == pytest.approx(mean_similarity(x), abs=2e-4)
    assert corpus_node["vendi"] == pytest.approx(vendi_score(x), abs=2e-4)
    ours_map = acc.map()
    assert ours_map["id"].to_list() == whole_map["id"].to_list()
    assert ours_map["label"].to_list() == whole_map["label"].to_list()
    assert np.abs(ours_map["x"].to_numpy()) == pytest.approx(
        np.abs(whole_map["x"].to_numpy()), abs=1e-4
    )  # PCA's axes are defined up to sign


def test_node_texts_fetched_a_bounded_group_at_a_time_give_the_same_metrics() -> None:
    """Without kept texts, ``nodes`` asks for the samples' texts a group of nodes at a time:
    never more than ``batch_rows`` rows (or one node's sample) at once, same metrics."""
    frame, x = corpus(1200)
    rows = frame.with_row_index("_row")
    kept = DiversityAccumulator(sample=40)
    lean = DiversityAccumulator(sample=40, keep_texts=False)
    for start in range(0, 1200, 300):
        kept.add(rows.slice(start, 300), x[start : start + 300])
        lean.add(rows.slice(start, 300), x[start : start + 300])
    texts = frame["text"].to_list()
    asked: list[int] = []

    def groups(wanted: list[set[int]]) -> Iterator[dict[int, str]]:
        for rows_of_group in wanted:
            asked.append(len(rows_of_group))
            yield {row: texts[row] for row in rows_of_group}

    assert_same_nodes(lean.nodes(groups=groups, batch_rows=60), kept.nodes())
    assert len(asked) > 3 and max(asked) <= 60  # 9 nodes of 40 rows: several groups
    with pytest.raises(ValueError, match="groups"):
        lean.nodes()


def test_a_batch_without_embeddings_turns_the_embedding_measures_off() -> None:
    frame, x = corpus(300)
    acc = DiversityAccumulator()
    rows = frame.with_row_index("_row")
    acc.add(rows.slice(0, 200), x[:200])
    acc.add(rows.slice(200, 100), None)
    nodes = acc.nodes()
    assert nodes["mean_similarity"].null_count() == nodes.height
    assert acc.map().height == 0
    assert_same_nodes(nodes, node_diversity(frame, None))


def _run_dir(
    tmp_path: Path, frame: pl.DataFrame, x: np.ndarray, lengths: pl.Series | None = None
) -> tuple[RunContext, Path]:
    """A run directory with the clean corpus and the quality stage's embeddings (shuffled,
    in several partitions, as the stage leaves them). Without ``lengths`` the embeddings are
    an older run's: no text lengths."""
    ctx = RunContext(config=CorpusConfig(), paths=RunDir(tmp_path / "run"))
    clean = tmp_path / "clean.parquet"
    frame.write_parquet(clean, row_group_size=10_000)
    order = np.random.default_rng(3).permutation(frame.height)
    emb_dir = ctx.paths.stage_dir("quality") / "embeddings"
    for k, chunk in enumerate(np.array_split(order, 4)):
        if lengths is not None:
            table = embeddings_table(frame["id"].gather(chunk), x[chunk], lengths.gather(chunk))
        else:
            table = pa.table(
                {
                    "id": frame["id"].gather(chunk).to_list(),
                    "embedding": [v.tolist() for v in x[chunk]],
                },
                schema=OLD_EMBEDDINGS_SCHEMA,
            )
        write_table(table, emb_dir / part_name(k))
    return ctx, clean


def test_buckets_are_bounded_and_cover_every_row_once(tmp_path: Path) -> None:
    frame, x = corpus(2000)
    ctx, clean = _run_dir(tmp_path, frame, x)
    seen: list[int] = []
    sizes = []
    with EmbeddedCorpus(ctx, clean, DIVERSITY_COLUMNS, bucket_rows=250) as embedded:
        for _ in range(2):  # iterable again (semantic dedup makes two passes)
            seen.clear()
            sizes.clear()
            for docs, vectors in embedded:
                assert vectors is not None and vectors.shape == (docs.height, 16)
                rows = docs["_row"].to_numpy()
                assert (frame["id"].gather(rows) == docs["id"]).all()
                assert np.array_equal(vectors, x[rows])  # each row with its own embedding
                seen += rows.tolist()
                sizes.append(docs.height)
            assert sorted(seen) == list(range(2000))
    assert len(sizes) == 8 and max(sizes) <= 2 * 250  # never the corpus at once
    assert not (ctx.paths.work / "diversity" / "_buckets").exists()  # temporary files gone


def test_the_summary_is_the_same_in_one_bucket_or_many(tmp_path: Path, monkeypatch) -> None:
    frame, x = corpus(1500)
    ctx, clean = _run_dir(tmp_path, frame, x)
    import builder.quality.buckets as buckets

    one = quality_summary(ctx, clean)
    monkeypatch.setattr(buckets, "BUCKET_ROWS", 200)
    many = quality_summary(ctx, clean)
    assert one is not None and many is not None
    assert_same_nodes(many.nodes, one.nodes)
    assert many.map["id"].to_list() == one.map["id"].to_list()
    assert_same_nodes(one.nodes, node_diversity(frame, x))


def _semantic_run(
    tmp_path: Path, n: int, pairs: int, lengths: bool = False
) -> tuple[RunContext, Path, list, np.ndarray]:
    """A run directory whose survivors hold ``pairs`` planted near-duplicate pairs among
    ``n`` random documents (the copy is slightly shorter: the original represents it);
    ``lengths``: the embeddings carry the texts' lengths, as the quality stage writes them."""
    frame, x = corpus(n, dim=32, seed=11)
    rng = np.random.default_rng(4)
    texts = frame["text"].to_list()
    for p in range(pairs):
        a, b = 2 * p, 2 * p + 1
        noisy = x[a] + rng.normal(scale=0.01, size=x.shape[1])
        x[b] = noisy / np.linalg.norm(noisy)
        texts[b] = texts[a][:-1]
    frame = frame.with_columns(pl.Series("text", texts), pl.lit(None, pl.Boolean).alias("verified"))
    ctx, kept = _run_dir(tmp_path, frame, x, frame["text"].str.len_chars() if lengths else None)
    return ctx, kept, frame["id"].to_list(), x


def test_semantic_dedup_in_buckets_is_exactly_the_in_memory_result(tmp_path: Path) -> None:
    ctx, kept, ids, x = _semantic_run(tmp_path, 1500, 20)
    frame = pl.read_parquet(kept)
    lengths = frame["text"].str.len_chars().to_numpy()
    whole = semantic_clusters(ids, x, threshold=0.95, cluster_size=200, lengths=lengths)
    ours = streamed_semantic_clusters(
        ctx, kept, threshold=0.95, cluster_size=200, sample_rows=5000, bucket_rows=300
    )
    assert ours is not None and whole.groups >= 20
    assert ours.clusters.equals(whole.clusters)
    assert (ours.groups, ours.removed, ours.kmeans_clusters) == (
        whole.groups,
        whole.removed,
        whole.kmeans_clusters,
    )


def test_semantic_dedup_takes_the_text_lengths_from_the_embeddings(tmp_path: Path) -> None:
    """The quality stage's embeddings carry the texts' lengths: semantic dedup uses them
    (never reading the texts) and finds what it finds from the texts; lengths that say the
    copies are the longer texts make the copies the representatives."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old_ctx, old_kept, ids, x = _semantic_run(tmp_path / "old", 1500, 20)
    ctx, kept, _, _ = _semantic_run(tmp_path / "new", 1500, 20, lengths=True)
    with EmbeddedCorpus(ctx, kept, ("id",), text_lengths=True) as corpus_:
        assert corpus_.lengths_embedded
    with EmbeddedCorpus(old_ctx, old_kept, ("id",), text_lengths=True) as corpus_:
        assert not corpus_.lengths_embedded
    args = {"threshold": 0.95, "cluster_size": 200, "sample_rows": 5000, "bucket_rows": 300}
    ours = streamed_semantic_clusters(ctx, kept, **args)
    theirs = streamed_semantic_clusters(old_ctx, old_kept, **args)
    assert ours is not None and theirs is not None and ours.groups >= 20
    assert ours.clusters.equals(theirs.clusters)
    # Lengths that contradict the texts: the (shorter) copies now represent their pairs.
    for part in (ctx.paths.stage_dir("quality") / "embeddings").glob("*.parquet"):
        table = pl.read_parquet(part)
        copy = pl.col("id").is_in([ids[2 * p + 1] for p in range(20)])
        swapped = table.with_columns(pl.when(copy).then(10_000).otherwise(1).alias("length"))
        write_table(swapped.to_arrow().cast(EMBEDDINGS_SCHEMA), part)
    flipped = streamed_semantic_clusters(ctx, kept, **args)
    assert flipped is not None
    removed = flipped.clusters.filter(pl.col("removed"))
    assert sorted(removed["id"].to_list()) == sorted(ids[2 * p] for p in range(20))


def test_semantic_dedup_above_the_sample_finds_the_same_duplicates(tmp_path: Path) -> None:
    """k-means trained on 400 of 3,000 documents, then every document assigned and grouped
    one bucket of clusters at a time: the planted pairs are found, with the same
    representatives as the in-memory pass."""
    ctx, kept, ids, x = _semantic_run(tmp_path, 3000, 30)
    ours = streamed_semantic_clusters(
        ctx, kept, threshold=0.95, cluster_size=100, sample_rows=400, bucket_rows=500
    )
    assert ours is not None and ours.kmeans_clusters == 30
    removed = ours.clusters.filter(pl.col("removed"))
    assert sorted(removed["id"].to_list()) == sorted(ids[2 * p + 1] for p in range(30))
    assert sorted(removed["representative_id"].to_list()) == sorted(ids[2 * p] for p in range(30))
    assert ours.groups == 30 and ours.removed == 30
    assert not (ctx.paths.work / "semdedup" / "_buckets").exists()


def test_semantic_dedup_without_embeddings_is_none(tmp_path: Path) -> None:
    frame, x = corpus(100)
    ctx, kept = _run_dir(tmp_path, frame.head(100), x)
    for part in (ctx.paths.stage_dir("quality") / "embeddings").glob("*.parquet"):
        part.unlink()
    assert streamed_semantic_clusters(ctx, kept, threshold=0.9, cluster_size=50) is None


def test_embeddings_are_written_column_wise_as_the_rows_would_be() -> None:
    from builder.records import to_table

    frame, x = corpus(50)
    lengths = frame["text"].str.len_chars()
    rows = [
        {"id": i, "embedding": v, "length": n}
        for i, v, n in zip(frame["id"], x.tolist(), lengths, strict=True)
    ]
    ours = to_table(embeddings_table(frame["id"], x, lengths), EMBEDDINGS_SCHEMA)
    assert ours.equals(to_table(rows, EMBEDDINGS_SCHEMA))
