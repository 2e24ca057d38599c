"""MinHash signatures as numpy arrays: one ``(documents, num_perm)`` uint32 matrix per batch.

Two modes share the permutation step and differ only in how a shingle becomes a hash:

- ``fast`` (default): shingle hashes come from ``normalize.ngram_hashes`` (word hashes from a
  byte polynomial, combined into n-gram hashes with numpy; no Python object per shingle;
  the top 32 bits are used), then the "affine32" permutation datasketch 2.x uses:
  ``fmix32(h)``, then ``a_k * h + b_k mod 2**32``, minimum per document. Signatures are
  deterministic (across runs, machines and worker counts) but differ from datasketch's,
  because datasketch hashes each shingle's bytes with SHA-1 (its main cost).
- ``datasketch``: each shingle string (words joined by a space, UTF-8) goes through
  ``hashfunc`` (default ``datasketch.hashfunc.sha1_hash32``) and the permutations are drawn
  from ``numpy.random.RandomState(seed)`` exactly as ``datasketch.MinHash`` draws them, for
  the ``affine32`` scheme (datasketch >= 2.0's default) or the ``legacy`` scheme (datasketch <
  2.0). The resulting rows equal ``datasketch.MinHash(num_perm, seed, hashfunc, scheme)
  .digest()`` after ``update_batch(shingles)``, so users can load them into
  ``datasketch.MinHash(hashvalues=row, seed=seed, scheme=scheme)`` and query a
  ``MinHashLSH``.

Either way the permutation is applied to all shingles of many documents at once
(permutations x shingles in uint32) and reduced per document with ``np.minimum.reduceat``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from builder.dedup.normalize import (
    Tokens,
    fmix32,
    ngram_hashes,
    ngram_offsets,
    ngram_texts,
    tokenize,
)

MODES = ("fast", "datasketch")
SCHEMES = ("affine32", "legacy")

_MERSENNE = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64((1 << 32) - 1)
EMPTY = np.uint32(0xFFFFFFFF)  # the value of every slot of an empty document's signature

# Shingles processed per block of the permutation step: 128 x 16384 uint32 is 8 MB (measured
# fastest: larger blocks amortise the per-call overhead of reduceat, smaller fit no cache).
_BLOCK = 16384


def sha1_hash32(data: bytes) -> int:
    """datasketch's default hash function: the first 4 bytes of SHA-1, little-endian."""
    return struct.unpack("<I", hashlib.sha1(data).digest()[:4])[0]


def permutations(num_perm: int, seed: int, scheme: str = "affine32") -> tuple[np.ndarray, ...]:
    """The ``(a, b)`` permutation parameters, drawn exactly as ``datasketch.MinHash`` does."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        pairs = np.array(
            [
                (
                    gen.randint(1, _MERSENNE, dtype=np.uint64),
                    gen.randint(0, _MERSENNE, dtype=np.uint64),
                )
                for _ in range(num_perm)
            ],
            dtype=np.uint64,
        ).T
        return pairs[0].copy(), pairs[1].copy()
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


@dataclass
class MinHasher:
    """Computes MinHash signatures for batches of texts.

    ``signatures(texts)`` returns a ``(len(texts), num_perm)`` uint32 matrix; a text without
    words gets a row of 0xFFFFFFFF (datasketch's empty MinHash). ``hashfunc`` only applies to
    ``mode="datasketch"`` and must return integers below 2**32; it must be a module-level
    function when signatures are computed in worker processes.
    """

    num_perm: int = 128
    seed: int = 1
    shingle_size: int = 5
    mode: str = "fast"
    scheme: str = "affine32"
    hashfunc: Callable[[bytes], int] | None = None
    _a: np.ndarray = field(init=False, repr=False)
    _b: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "fast" and self.scheme != "affine32":
            raise ValueError("the fast mode uses the affine32 scheme; legacy needs datasketch mode")
        if self.num_perm < 1:
            raise ValueError("num_perm must be >= 1")
        self._a, self._b = permutations(self.num_perm, self.seed, self.scheme)

    # -- shingle hashes -------------------------------------------------------------------

    def shingle_hashes(self, tokens: Tokens) -> tuple[np.ndarray, np.ndarray]:
        """32-bit (fast/affine32) or raw ``hashfunc`` values of every shingle, plus offsets."""
        if self.mode == "fast":
            grams = ngram_hashes(tokens, self.shingle_size)
            return (grams.hashes >> np.uint64(32)).astype(np.uint32), grams.offsets
        texts = ngram_texts(tokens, self.shingle_size)
        func = self.hashfunc or sha1_hash32
        values = np.fromiter(
            (func(s.encode("utf-8")) for s in texts), dtype=np.uint64, count=len(texts)
        )
        if self.scheme == "affine32" and len(values) and int(values.max()) > 0xFFFFFFFF:
            raise ValueError(
                "hashfunc returned a value above 2**32 - 1; the affine32 scheme needs 32-bit "
                "hashes (datasketch raises the same error)"
            )
        offsets = ngram_offsets(tokens.counts, self.shingle_size)
        if self.scheme == "affine32":
            return values.astype(np.uint32), offsets
        return values, offsets

    # -- signatures -----------------------------------------------------------------------

    def signatures_from_hashes(self, hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Apply the permutations to shingle hashes and take the minimum per document."""
        n_docs = len(offsets) - 1
        out = np.full((n_docs, self.num_perm), EMPTY, dtype=np.uint32)
        if len(hashes) == 0:
            return out
        if self.scheme == "legacy":
            return self._legacy(hashes, offsets, out)
        hv = fmix32(hashes.astype(np.uint32, copy=False))
        a = self._a[:, None]
        b = self._b[:, None]
        doc_of = np.repeat(np.arange(n_docs), np.diff(offsets))
        total = len(hv)
        buf = np.empty((self.num_perm, min(_BLOCK, total)), dtype=np.uint32)
        for lo in range(0, total, _BLOCK):
            hi = min(total, lo + _BLOCK)
            block = buf[:, : hi - lo]
            np.multiply(a, hv[None, lo:hi], out=block)
            block += b
            docs = doc_of[lo:hi]
            # starts of each document's run inside this block
            cut = np.flatnonzero(np.diff(docs)) + 1
            seg = np.concatenate(([0], cut))
            mins = np.minimum.reduceat(block, seg, axis=1).T
            ids = docs[seg]
            np.minimum(out[ids], mins, out=mins)
            out[ids] = mins
        return out

    def _legacy(self, hashes: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> np.ndarray:
        """datasketch < 2.0: ``(a*h + b) % (2**61 - 1)`` in wrapping uint64, cut to 32 bits."""
        a = self._a[None, :]
        b = self._b[None, :]
        hv = hashes.astype(np.uint64)
        n_docs = len(offsets) - 1
        doc_of = np.repeat(np.arange(n_docs), np.diff(offsets))
        step = max(1, _BLOCK // 2)
        with np.errstate(over="ignore"):
            for lo in range(0, len(hv), step):
                hi = min(len(hv), lo + step)
                phv = (hv[lo:hi, None] * a + b) % _MERSENNE
                phv &= _MAX32
                docs = doc_of[lo:hi]
                seg = np.concatenate(([0], np.flatnonzero(np.diff(docs)) + 1))
                mins = np.minimum.reduceat(phv, seg, axis=0).astype(np.uint32)
                ids = docs[seg]
                out[ids] = np.minimum(out[ids], mins)
        return out

    def signatures_from_tokens(self, tokens: Tokens) -> np.ndarray:
        hashes, offsets = self.shingle_hashes(tokens)
        return self.signatures_from_hashes(hashes, offsets)

    def signatures(self, texts: Sequence[str | None]) -> np.ndarray:
        """Signatures of raw texts (normalised and tokenised here)."""
        return self.signatures_from_tokens(tokenize(texts))
