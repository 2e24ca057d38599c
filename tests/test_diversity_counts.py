"""distinct-n counts what it says: distinct word n-grams (within a document) over all of
them, against a plain Python count of word tuples."""

from __future__ import annotations

import random
import re

import pytest

from builder.quality.metrics import NGRAMS, distinct_n

WORDS = "alpha beta gamma delta café naïve Alpha BETA x_y 42".split()


def _reference(texts: list[str], n: int) -> float | None:
    grams: list[tuple[str, ...]] = []
    for text in texts:
        words = re.findall(r"\w+", text.lower())
        grams += [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distinct_n_counts_distinct_word_ngrams_within_documents(seed: int) -> None:
    rng = random.Random(seed)
    texts = [
        " ".join(rng.choices(WORDS, k=rng.randint(0, 30))) + rng.choice(["", ".", " -- "])
        for _ in range(60)
    ]
    texts += ["", "one", "same same same same"]
    for n in NGRAMS:
        assert distinct_n(texts, n) == _reference(texts, n)


def test_distinct_n_without_enough_words_is_none() -> None:
    assert distinct_n(["a b", "c"], 3) is None
    assert distinct_n(["a b c", "a b c"], 3) == 0.5
