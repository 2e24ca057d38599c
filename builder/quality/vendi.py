"""Vendi scores (Friedman & Dieng 2023) of the diversity summary's nodes: the exponential
of the Shannon entropy of the eigenvalues of K/n, K the cosine-similarity matrix of a node's
``n`` unit vectors. The non-zero eigenvalues of ``X X^T`` (n x n) equal those of ``X^T X``
(d x d), so a node is scored from whichever is smaller; ``GramSums`` builds the d x d ones a
few rows at a time (``DiversityAccumulator`` in ``builder.quality.metrics``)."""

from __future__ import annotations

import numpy as np


def vendi_score(x: np.ndarray) -> float | None:
    """Vendi score of unit vectors ``x``: the effective number of distinct documents."""
    xf = x.astype(np.float64)
    return vendi_from_gram(xf.T @ xf, x.shape[0])


def vendi_of(matrix: np.ndarray, n: int) -> float | None:
    """``vendi_from_gram`` of a Gram matrix (square), or of the kernel ``X X^T`` of rows
    ``X`` with fewer rows than columns (the same non-zero eigenvalues as ``X^T X``)."""
    if matrix.shape[0] != matrix.shape[1]:
        x = matrix.astype(np.float64)
        matrix = x @ x.T
    return vendi_from_gram(matrix, n)


def vendi_from_gram(gram: np.ndarray, n: int) -> float | None:
    """``vendi_score`` from ``X^T X`` (d x d) of ``n`` rows."""
    if n == 0:
        return None
    eig = np.linalg.eigvalsh(gram / n)
    eig = eig[eig > 1e-12]
    eig = eig / eig.sum()
    return round(float(np.exp(-(eig * np.log(eig)).sum())), 4)


#: Rows of a node (one with as many documents as dimensions or more) gathered before its
#: Gram matrix is updated (``_vendi_in_passes``): at most this many float32 rows (128 KB at
#: 256 dims) wait per node of a pass, and a few products replace one per batch.
GRAM_ROWS = 128
#: Rows turned into float64 at once by a Gram product here and by ``metrics._block_sums``
#: (4096 x 256 x 8 B = 8 MB): a node
#: such as ``(all)`` holds a whole bucket, and one float64 copy of it (100 MB at 50k rows)
#: left the heap fragmented long after it was freed.
SUM_BLOCK = 4096


class GramSums:
    """Gram matrices ``X^T X`` (float64) of some nodes' rows, given a few rows at a time:
    each node's rows wait until ``GRAM_ROWS`` or more have come, then one product adds
    them all. The ``small`` nodes' rows all wait: ``finish`` returns their rows, whose
    kernel ``X X^T`` (n x n; the same non-zero eigenvalues) ``vendi_of`` makes. ``finish``
    adds the rest and returns the matrices by node."""

    def __init__(self, small: set[str] | None = None) -> None:
        self.grams: dict[str, np.ndarray] = {}
        self.small = small or set()
        self._pending: dict[str, list[np.ndarray]] = {}
        self._rows: dict[str, int] = {}

    def add(self, node: str, rows: np.ndarray) -> None:
        self._pending.setdefault(node, []).append(rows)
        self._rows[node] = self._rows.get(node, 0) + len(rows)
        if self._rows[node] >= GRAM_ROWS and node not in self.small:
            self._flush(node)

    def finish(self) -> dict[str, np.ndarray]:
        """Each node's Gram matrix (d x d), or a small node's rows (n x d float32, fewer
        rows than columns: ``vendi_of`` makes the kernel)."""
        for node in list(self._pending):
            if node in self.small:
                self.grams[node] = np.concatenate(self._pending.pop(node))
            else:
                self._flush(node)
        return self.grams

    def _flush(self, node: str) -> None:
        blocks = self._pending.pop(node)
        del self._rows[node]
        x = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        gram = _gram(x)
        if node in self.grams:
            self.grams[node] += gram  # in place: no 512 KB temporary
        else:
            self.grams[node] = gram


def _gram(rows: np.ndarray) -> np.ndarray:
    """``rows^T rows`` in float64 (``rows`` not empty), ``SUM_BLOCK`` rows converted to
    float64 at a time."""
    gram: np.ndarray | None = None
    for lo in range(0, len(rows), SUM_BLOCK):
        x = rows[lo : lo + SUM_BLOCK].astype(np.float64)
        if gram is None:
            gram = x.T @ x
        else:
            gram += x.T @ x
    assert gram is not None
    return gram
