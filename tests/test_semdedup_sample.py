"""Semantic dedup above the k-means sample: the sample chosen from the ids first, each vector
put straight into its row, gives exactly the result of keeping the smallest id keys while
streaming (a stable sort of every key, in the order the buckets yield the documents), then
k-means on that sample, every document assigned to its nearest centre and grouped within
its cluster; also when many documents share a key (ties broken in yield order)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import builder.quality.metrics as metrics
from builder.quality.buckets import (
    LENGTH,
    EmbeddedCorpus,
    kmeans_sample,
    smallest_keys,
    streamed_semantic_clusters,
)
from builder.quality.semdedup import SemanticResult, assign, clusters_result, group_rows, kmeans_fit
from tests.test_quality_streaming import _semantic_run


def _reference(
    ctx, kept: Path, *, sample: int, bucket_rows: int, cluster_size: int, threshold: float
) -> tuple[SemanticResult, np.ndarray, np.ndarray]:
    """The whole corpus in memory: every key, a stable sort, the first ``sample`` rows
    (returned with their keys and vectors)."""
    ids: list[str] = []
    lengths, verified, vectors = [], [], []
    with EmbeddedCorpus(
        ctx, kept, ("id", "verified"), bucket_rows=bucket_rows, text_lengths=True, name="ref"
    ) as corpus:
        for docs, x in corpus:
            assert x is not None
            ids += docs["id"].to_list()
            lengths.append(docs[LENGTH].to_numpy())
            verified += docs["verified"].to_list()
            vectors.append(x)
    keys = np.array([metrics.id_key(i) for i in ids], dtype=np.uint64)
    x = np.concatenate(vectors)
    picked = np.argsort(keys, kind="stable")[:sample]
    k = min(-(-len(ids) // cluster_size), sample)
    _, centres = kmeans_fit(x[picked], k, seed=0)
    labels = assign(x, centres)
    rows, groups = group_rows(
        ids, x, labels, threshold, lengths=np.concatenate(lengths), verified=verified
    )
    return clusters_result(rows, groups, k), keys[picked], x[picked]


@pytest.mark.parametrize("coarse", [False, True], ids=["distinct-keys", "tied-keys"])
def test_streamed_sample_is_the_stable_smallest_keys(
    tmp_path: Path, monkeypatch, coarse: bool
) -> None:
    ctx, kept, _ids, _x = _semantic_run(tmp_path, 2400, 24)
    if coarse:  # five keys for 2,400 documents: the sample is ~480 rows tied at one key
        real = metrics.id_key
        monkeypatch.setattr(metrics, "id_key", lambda doc_id: real(doc_id) % 5)
    args = {"threshold": 0.95, "cluster_size": 80}
    ref, sample_keys, sample_x = _reference(ctx, kept, sample=300, bucket_rows=250, **args)
    if coarse:
        assert len(set(sample_keys.tolist())) == 1  # every sampled row ties with the others
    with EmbeddedCorpus(
        ctx, kept, ("id", "verified"), bucket_rows=250, text_lengths=True, name="s"
    ) as corpus:
        assert np.array_equal(smallest_keys(corpus, 300), np.sort(sample_keys))
        x = kmeans_sample(corpus, 300)
        assert x is not None and np.array_equal(x, sample_x)  # same rows, same order
        # the sample was chosen from the ids: the most rows held is one bucket, not more
        assert corpus.max_rows_held <= 2 * 250
    ours = streamed_semantic_clusters(ctx, kept, sample_rows=300, bucket_rows=250, **args)
    assert ours is not None and ours.kmeans_clusters == 30
    assert ours.clusters.equals(ref.clusters)
    assert (ours.groups, ours.removed) == (ref.groups, ref.removed)
    assert ours.removed >= 20
