"""LSH banding by sorting, candidate verification, and the S-curve that explains the knobs.

A signature of ``num_perm`` values is cut into ``bands`` bands of ``rows`` values. Two
documents become a *candidate pair* when all ``rows`` values of at least one band agree,
which for true Jaccard similarity ``s`` happens with probability ``1 - (1 - s**rows)**bands``
(the S-curve). Candidates are then *verified*: the fraction of all ``num_perm`` slots that
agree (the MinHash estimate of Jaccard) must reach ``threshold``.

Banding is done by sorting 64-bit band keys with numpy (one ``argsort`` per band), never with
Python dicts of lists, so 10 million documents cost a few arrays, not 10 million objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from builder.dedup.normalize import fmix64

_POLY = np.uint64(0xC2B2AE3D27D4EB4F)


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """64-bit key of each band of each signature, shape ``(n, bands)``.

    Equal band slices give equal keys; different slices collide with probability ~2**-64
    (and a collision only adds a candidate that verification then rejects).
    """
    if bands * rows > signatures.shape[1]:
        raise ValueError(
            f"bands x rows = {bands * rows} is more than num_perm = {signatures.shape[1]}"
        )
    n = signatures.shape[0]
    out = np.empty((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            block = signatures[:, band * rows : (band + 1) * rows]
            acc = np.zeros(n, dtype=np.uint64)
            for col in range(rows):
                acc *= _POLY
                acc += block[:, col].astype(np.uint64)
            out[:, band] = fmix64(acc)
    return out


def bucket_pairs(keys: np.ndarray, rows: np.ndarray, max_bucket: int = 64) -> np.ndarray:
    """Candidate pairs from one band: documents whose band keys are equal.

    ``rows`` are the global row numbers of ``keys``. Buckets of up to ``max_bucket``
    documents yield every pair; larger buckets (boilerplate shared by many documents) yield
    a star around their first member plus a chain, which keeps the pair count linear while
    union-find still connects every verified member. Returns an ``(m, 2)`` int64 array with
    ``a < b`` in each row.
    """
    if len(keys) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    r = rows[order]
    new = np.empty(len(k), dtype=bool)
    new[0] = True
    np.not_equal(k[1:], k[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, len(k)))
    multi = sizes >= 2
    if not multi.any():
        return np.zeros((0, 2), dtype=np.int64)
    pairs = []
    small = multi & (sizes <= max_bucket)
    if small.any():
        s_starts = starts[small]
        s_sizes = sizes[small]
        elem = np.repeat(s_starts, s_sizes) + (
            np.arange(int(s_sizes.sum())) - np.repeat(np.cumsum(s_sizes) - s_sizes, s_sizes)
        )
        pos = elem - np.repeat(s_starts, s_sizes)
        size_of = np.repeat(s_sizes, s_sizes)
        for d in range(1, int(s_sizes.max())):
            ok = pos + d < size_of
            if not ok.any():
                break
            i = elem[ok]
            pairs.append(np.stack([r[i], r[i + d]], axis=1))
    big = multi & (sizes > max_bucket)
    for start, size in zip(starts[big].tolist(), sizes[big].tolist(), strict=True):
        members = r[start : start + size]
        star = np.stack([np.full(size - 1, members[0]), members[1:]], axis=1)
        chain = np.stack([members[:-1], members[1:]], axis=1)
        pairs.extend([star, chain])
    out = np.concatenate(pairs).astype(np.int64)
    out.sort(axis=1)
    return out


def unique_pairs(pairs: list[np.ndarray], n: int) -> np.ndarray:
    """Merge pair arrays from several bands, dropping repeats; sorted by (a, b)."""
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    allp = np.concatenate(pairs)
    if len(allp) == 0:
        return allp.reshape(0, 2)
    code = np.unique(allp[:, 0] * np.int64(n) + allp[:, 1])
    return np.stack([code // n, code % n], axis=1)


def pair_jaccard(signatures: np.ndarray, pairs: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Estimated Jaccard (fraction of equal slots) of each pair, gathered in chunks.

    ``signatures`` may be a read-only ``np.memmap``: only the rows of candidate pairs are
    ever touched.
    """
    out = np.empty(len(pairs), dtype=np.float64)
    for lo in range(0, len(pairs), chunk):
        p = pairs[lo : lo + chunk]
        a = np.asarray(signatures[p[:, 0]])
        b = np.asarray(signatures[p[:, 1]])
        out[lo : lo + len(p)] = (a == b).mean(axis=1)
    return out


# -- Explaining the parameters -----------------------------------------------------------


def candidate_probability(s: float, bands: int, rows: int) -> float:
    """P(two documents with Jaccard ``s`` share at least one band): the S-curve."""
    return 1.0 - (1.0 - s**rows) ** bands


def verify_probability(s: float, num_perm: int, threshold: float) -> float:
    """P(the MinHash estimate of a pair with Jaccard ``s`` reaches ``threshold``)."""
    need = math.ceil(threshold * num_perm - 1e-9)
    if need <= 0:
        return 1.0
    from scipy.stats import binom

    return float(binom.sf(need - 1, num_perm, s))


def _integrate(f, lo: float, hi: float, steps: int = 200) -> float:
    if hi <= lo:
        return 0.0
    xs = np.linspace(lo, hi, steps + 1)
    ys = np.array([f(x) for x in xs])
    return float(np.trapezoid(ys, xs))


def optimal_bands_rows(
    threshold: float, num_perm: int, weights: tuple[float, float] = (0.5, 0.5)
) -> tuple[int, int]:
    """datasketch's rule: minimise the weighted areas of false positives and negatives."""
    best = (1, 1)
    best_err = float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = _integrate(lambda s, b=b, r=r: candidate_probability(s, b, r), 0.0, threshold)
            fn = _integrate(lambda s, b=b, r=r: 1 - candidate_probability(s, b, r), threshold, 1.0)
            err = weights[0] * fp + weights[1] * fn
            if err < best_err:
                best_err, best = err, (b, r)
    return best


def s_curve(
    bands: int, rows: int, num_perm: int, threshold: float, *, step: float = 0.05
) -> Iterator[tuple[float, float, float, float]]:
    """Rows of (s, P(candidate), P(estimate >= threshold), P(flagged)) for s in 0.5..1."""
    count = int(round(0.5 / step))
    for i in range(count + 1):
        s = round(0.5 + i * step, 4)
        pc = candidate_probability(s, bands, rows)
        pv = verify_probability(s, num_perm, threshold)
        yield s, pc, pv, pc * pv


def explain(*, num_perm: int, bands: int, rows: int, threshold: float, shingle_size: int) -> str:
    """A plain-text explanation of the near-duplicate parameters with the S-curve table."""
    mid = (1.0 / bands) ** (1.0 / rows)
    lines = [
        f"MinHash LSH: {num_perm} permutations, {bands} bands x {rows} rows, "
        f"word {shingle_size}-gram shingles, threshold {threshold:g}",
        "",
        "Two documents with Jaccard similarity s (of their shingle sets) become a candidate",
        f"pair with P = 1 - (1 - s^{rows})^{bands}; a candidate is kept when its estimated",
        f"Jaccard (equal slots / {num_perm}) is >= {threshold:g}. P(flagged) ~ product of both.",
        "",
        "     s   P(candidate)   P(est >= thr)   P(flagged)",
    ]
    for s, pc, pv, pf in s_curve(bands, rows, num_perm, threshold):
        mark = "  <- threshold" if abs(s - threshold) < 1e-9 else ""
        lines.append(f"  {s:4.2f}   {pc:12.4f}   {pv:13.4f}   {pf:10.4f}{mark}")
    miss = 1 - candidate_probability(threshold, bands, rows)
    miss_hi = 1 - candidate_probability(min(1.0, threshold + 0.05), bands, rows)
    lines += [
        "",
        f"The S-curve is steepest near s = (1/b)^(1/r) = {mid:.3f}.",
        f"False negatives: a pair at s = {threshold:g} is never even compared with probability "
        f"{miss:.3f} (at s = {min(1.0, threshold + 0.05):g}: {miss_hi:.4f}). More bands or "
        "fewer rows lower this.",
        "False positives: pairs below the threshold that become candidates cost only time, "
        "because verification rejects them; with fewer bands or more rows there are fewer.",
        f"Verification noise: the estimate has standard deviation sqrt(s(1-s)/{num_perm}) "
        f"(~{math.sqrt(threshold * (1 - threshold) / num_perm):.3f} at s = {threshold:g}), so "
        "pairs just above the threshold are sometimes missed and pairs just below it are "
        "sometimes flagged; more permutations narrow this band.",
    ]
    db, dr = optimal_bands_rows(threshold, num_perm)
    if (db, dr) != (bands, rows):
        lines.append(
            f"datasketch's MinHashLSH would pick {db} x {dr} for threshold {threshold:g} and "
            f"{num_perm} permutations (it balances the two error areas equally); it compares a "
            f"pair at s = {threshold:g} with P = {candidate_probability(threshold, db, dr):.3f} "
            f"(vs {candidate_probability(threshold, bands, rows):.3f} here), which costs recall."
        )
    return "\n".join(lines)
