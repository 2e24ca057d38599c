"""Deterministic draws and the text helpers the walker samples with (``builder.walk``).

Every random choice comes from xxhash of a walk seed and a text, never from Python's
``hash()`` or a shared generator, so the same seed gives the same units in every process.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import xxhash

__all__ = ["DIFFICULTIES", "ORDERS", "description_phrases"]

ORDERS = ("random", "curriculum")
DIFFICULTIES = ("basic", "intermediate", "advanced")
_TWO64 = float(2**64)


_MASK64 = (1 << 64) - 1


def _seed64(seed: int) -> int:
    """A 64-bit hash seed for a walk seed (any int, negative too)."""
    return xxhash.xxh64_intdigest(str(seed).encode("utf-8"))


def _uniform(seed64: int, text: str) -> float:
    """A deterministic uniform number in (0, 1) from a walk seed and a text."""
    return (xxhash.xxh64_intdigest(text.encode("utf-8"), seed=seed64) + 0.5) / _TWO64


class _Rng:
    """A tiny counter-based generator on xxhash: cheap to create (one per unit) and, unlike
    ``random.Random``'s methods, guaranteed to give the same draws on every Python version."""

    __slots__ = ("_seed", "_n")

    def __init__(self, seed: int) -> None:
        self._seed = seed & _MASK64
        self._n = 0

    def _next(self) -> int:
        self._n += 1
        return xxhash.xxh64_intdigest(self._n.to_bytes(8, "little"), seed=self._seed)

    def below(self, n: int) -> int:
        """Uniform in [0, n) (the modulo bias is below 2**-50 for the small n used here)."""
        return self._next() % n

    def randint(self, a: int, b: int) -> int:
        return a + self.below(b - a + 1)

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.below(len(seq))]

    def sample(self, seq: Sequence[Any], k: int) -> list[Any]:
        pool = list(seq)
        for i in range(k):
            j = i + self.below(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]


def _difficulty(index: int, count: int) -> str:
    if count <= 1:
        return "intermediate"
    return DIFFICULTIES[min(2, (3 * index) // count)]


_PIECES = re.compile(r"[,;:()\n]|\.(?:\s|$)")
_CONJUNCTION = re.compile(r"\s+(?:and|or)\s+", re.IGNORECASE)
_LEADING = re.compile(r"^(?:(?:and|or|including|such as|e\.g\.|the|a|an)\s+)+", re.IGNORECASE)
_FUNCTION_WORDS = frozenset(
    "a an the and or of to from in on at by for with into onto than as via".split()
)


def description_phrases(text: str | None, max_words: int = 8) -> list[str]:
    """Short noun-phrase-like pieces of a description, used as extra concepts of a leaf.

    Descriptions are mostly lists ("Membrane structure, diffusion, osmosis and active
    transport."): the text is cut at commas, semicolons, colons, brackets and full stops, the
    last item of a list is cut at "and"/"or", and fragments that end in a function word
    ("converting to") or run longer than ``max_words`` are dropped.
    """
    if not text:
        return []
    return list(_phrases(text, max_words))


@functools.lru_cache(maxsize=4096)
def _phrases(text: str, max_words: int) -> tuple[str, ...]:
    pieces = [p for p in _PIECES.split(text) if p.strip()]
    if len(pieces) >= 2:
        last = _CONJUNCTION.split(pieces[-1])
        if all(part.split() and part.split()[-1].lower() not in _FUNCTION_WORDS for part in last):
            pieces[-1:] = last
    out: list[str] = []
    seen: set[str] = set()
    for piece in pieces:
        phrase = _LEADING.sub("", " ".join(piece.split())).strip(" -'\"")
        words = phrase.split()
        if len(phrase) < 3 or not words or len(words) > max_words:
            continue
        if words[-1].lower() in _FUNCTION_WORDS:
            continue
        key = phrase.casefold()
        if key not in seen:
            seen.add(key)
            out.append(phrase)
    return tuple(out)
