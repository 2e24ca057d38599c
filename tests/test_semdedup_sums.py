"""semdedup's per-cluster sums equal ``np.add.at`` bit for bit (so k-means, and with it the
kept/removed documents, are unchanged by the faster summation)."""

from __future__ import annotations

import numpy as np
import pytest

from builder.quality import semdedup


@pytest.mark.parametrize(("n", "k"), [(1, 1), (50, 49), (3000, 1), (5000, 7), (20000, 150)])
def test_cluster_sums_match_add_at_bytes(n: int, k: int) -> None:
    rng = np.random.default_rng(n + k)
    x = rng.standard_normal((n, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.integers(k, size=n)
    if k > 4:
        labels[labels == 3] = 4  # an empty cluster and an uneven one
    expected = np.zeros((k, 32), dtype=np.float32)
    np.add.at(expected, labels, x)
    sums, counts = semdedup._cluster_sums(x, labels, k)
    assert sums.dtype == np.float32
    assert sums.tobytes() == expected.tobytes()
    assert counts.tolist() == np.bincount(labels, minlength=k).tolist()


def test_kmeans_labels_unchanged_against_add_at_reference() -> None:
    """The k-means labels equal those of a reference loop using ``np.add.at``."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    k = 9
    labels = semdedup.kmeans(x, k, seed=3)
    ref = _reference_kmeans(x, k, seed=3)
    assert labels.tolist() == ref.tolist()
    assert len(set(labels.tolist())) > 1


def _reference_kmeans(x: np.ndarray, k: int, seed: int, iterations: int = 10) -> np.ndarray:
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    centres = np.empty((k, x.shape[1]), dtype=np.float32)
    centres[0] = x[rng.integers(n)]
    best = np.full(n, np.inf, dtype=np.float64)
    for j in range(1, k):
        best = np.minimum(best, np.maximum(0.0, 1.0 - x @ centres[j - 1]))
        total = best.sum()
        pick = rng.integers(n) if total <= 0 else rng.choice(n, p=best / total)
        centres[j] = x[pick]
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        labels = np.argmax(x @ centres.T, axis=1)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, x)
        empty = np.bincount(labels, minlength=k) == 0
        sums[empty] = x[rng.integers(n, size=int(empty.sum()))]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        new = (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        if np.allclose(new, centres, atol=1e-6):
            break
        centres = new
    return labels
