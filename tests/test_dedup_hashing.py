"""Word hashes, exact keys and signatures keep their values: the vectorised code equals the
definitions written one word at a time, on odd inputs, and fixed texts keep the signatures
they had (results of a dedup never change with the implementation)."""

from __future__ import annotations

import hashlib

import numpy as np
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.dedup.minhash import MinHasher
from builder.dedup.normalize import (
    exact_key_text,
    exact_keys,
    ngram_hashes,
    reference_words,
    tokenize,
)

B = 0x100000001B3  # the byte polynomial's base
M64 = (1 << 64) - 1


def _fmix64(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & M64
    return h ^ (h >> 33)


def word_hash(word: str) -> int:
    """The definition: fmix64 of sum (byte + 1) * B**i over the word's UTF-8 bytes."""
    total, power = 0, 1
    for b in word.encode("utf-8"):
        total = (total + (b + 1) * power) & M64
        power = (power * B) & M64
    return _fmix64(total)


ODD = [
    None,
    "",
    "one",
    "   ",
    "\n\t\u2003\u00a0",
    "x" * 5000,
    "x" * 5000 + " y " + "z" * 777,
    "Hello, World! Ünïcödé straße İstanbul 中文 🙂 e\u0301 ﬁnal ½ ²",
    "under_score snake_case 12.5 3,000 a-b",
    "  leading and trailing  ",
    "runs  of \u2003\u2003 mixed \t\n spaces",
    "ends with space ",
    " ".join(f"w{i}" for i in range(700)),
    "—’“”",
]


def _check_words(texts: list[str | None]) -> None:
    tokens = tokenize(texts, exact=True)
    for i, text in enumerate(texts):
        words = reference_words(text)
        assert tokens.words_of(i) == words
        a, b = int(tokens.offsets[i]), int(tokens.offsets[i + 1])
        assert tokens.hashes[a:b].tolist() == [word_hash(w) for w in words]
        key = xxhash.xxh3_128_intdigest(exact_key_text(text).encode("utf-8"))
        assert int(tokens.exact[i, 0]) << 64 | int(tokens.exact[i, 1]) == key
    assert np.array_equal(exact_keys(texts), tokens.exact)


def test_word_hashes_and_exact_keys_on_odd_inputs() -> None:
    _check_words(ODD)
    for text in ODD:  # one text alone: no neighbour before or after it in the buffer
        _check_words([text])
    _check_words([])


def test_word_hashes_across_hashing_segments() -> None:
    """A batch far longer than one hashing segment (256 KiB): words on both sides of every
    segment end, and single words longer than a segment (one segment of their own)."""
    import random

    rng = random.Random(5)
    words = ["a", "bb", "ccc", "straße", "中文字", "🙂x", "w" * 40]
    texts: list[str | None] = [
        " ".join(rng.choice(words) for _ in range(rng.randint(0, 3000))) for _ in range(120)
    ]
    texts.insert(7, "y" * 300_000)  # a word longer than a segment
    texts.insert(50, "pre " + "é" * 200_000 + " post")  # 400 KB of two-byte characters
    texts.insert(90, None)
    _check_words(texts)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.text(
                alphabet=st.one_of(
                    st.sampled_from(list("ab Z_9.\n\t\u2003\u00a0é́İ中🙂")),
                    st.characters(codec="utf-8"),
                ),
                max_size=60,
            ),
        ),
        max_size=6,
    )
)
def test_word_hashes_equal_the_definition(texts: list[str | None]) -> None:
    _check_words(texts)


def test_fixed_texts_keep_their_hashes_and_signatures() -> None:
    """Values computed by the code before this implementation (c4ff338 and after)."""
    texts = [
        None,
        "",
        "one",
        "Hello, World! Ünïcödé straße İstanbul 中文 🙂 e\u0301",
        "x" * 5000 + " tail",
        " ".join(f"w{i}" for i in range(700)),
        "a b c d",
        "\n\t \u2003 ",
    ]
    tokens = tokenize(texts, exact=True)
    sig = MinHasher().signatures(texts)
    digest = hashlib.sha256()
    for a in (tokens.hashes, tokens.counts, tokens.exact, ngram_hashes(tokens, 5).hashes, sig):
        digest.update(np.ascontiguousarray(a).tobytes())
    assert tokens.hashes[:4].tolist() == [
        6411676611672011711,
        2838170395950136461,
        13708746466347090021,
        17227041571707047122,
    ]
    assert sig[3, :4].tolist() == [1064355291, 284643493, 3030114841, 174381342]
    assert digest.hexdigest() == "ed8625008ec8cde36f924bcd1b85d6a55e55856a962271ca362b2f25dc4adff0"
