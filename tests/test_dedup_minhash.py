"""MinHash signatures: datasketch compatibility, n-gram hashing, banding and the S-curve."""

from __future__ import annotations

import datasketch  # noqa: E402
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.dedup import MinHasher, dedup_table, shingles
from builder.dedup.lsh import bucket_pairs, candidate_probability, explain, unique_pairs
from builder.dedup.normalize import ngram_hashes, ngram_texts, tokenize
from builder.settings.dedup import DedupSettings

TEXTS = [
    "The quick brown fox jumps over the lazy dog, again and again and again!",
    "",
    None,
    "Short text",
    "one",
    "Ünïcödé ﬁne WORDS — with ‘quotes’, naïve café and more words to be long enough",
    "Numbers 3.14 and 42 count as words; so_do_underscores.",
]
HAS_SCHEME = hasattr(datasketch.MinHash(num_perm=4), "scheme")
SCHEMES = ["affine32", "legacy"] if HAS_SCHEME else ["legacy"]


def _datasketch(text, *, num_perm, seed, scheme, n, hashfunc=None, batch=True):
    kwargs = {"num_perm": num_perm, "seed": seed}
    if HAS_SCHEME:
        kwargs["scheme"] = scheme
    if hashfunc is not None:
        kwargs["hashfunc"] = hashfunc
    m = datasketch.MinHash(**kwargs)
    sh = [s.encode("utf-8") for s in shingles(text, n)]
    if batch:
        m.update_batch(sh)
    else:
        for s in sh:
            m.update(s)
    return m


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("num_perm,seed,n", [(128, 1, 5), (64, 42, 3)])
def test_signatures_equal_datasketch(scheme, num_perm, seed, n):
    mh = MinHasher(num_perm=num_perm, seed=seed, shingle_size=n, mode="datasketch", scheme=scheme)
    sig = mh.signatures(TEXTS)
    assert sig.shape == (len(TEXTS), num_perm) and sig.dtype == np.uint32
    for text, row in zip(TEXTS, sig, strict=True):
        for batch in (True, False):
            ref = _datasketch(text, num_perm=num_perm, seed=seed, scheme=scheme, n=n, batch=batch)
            np.testing.assert_array_equal(ref.digest(), row)


def _custom_hash(data: bytes) -> int:
    import zlib

    return zlib.crc32(data)


def test_signatures_equal_datasketch_with_custom_hashfunc():
    scheme = SCHEMES[0]
    mh = MinHasher(num_perm=32, seed=7, mode="datasketch", scheme=scheme, hashfunc=_custom_hash)
    sig = mh.signatures(TEXTS)
    for text, row in zip(TEXTS, sig, strict=True):
        ref = _datasketch(text, num_perm=32, seed=7, scheme=scheme, n=5, hashfunc=_custom_hash)
        np.testing.assert_array_equal(ref.digest(), row)


def test_our_signatures_can_be_queried_with_datasketch_lsh():
    assert HAS_SCHEME, "datasketch < 2.0 has no affine32 scheme: make test installs the lock"
    base = " ".join(f"w{i}" for i in range(200))
    near = base.replace("w50 ", "x50 ")
    other = " ".join(f"z{i}" for i in range(200))
    mh = MinHasher(mode="datasketch")
    sig = mh.signatures([base, near, other])
    lsh = datasketch.MinHashLSH(threshold=0.8, num_perm=128)
    for key, row in zip(["base", "near", "other"], sig, strict=True):
        lsh.insert(key, datasketch.MinHash(hashvalues=row, seed=1, scheme="affine32"))
    query = _datasketch(base, num_perm=128, seed=1, scheme="affine32", n=5)
    assert set(lsh.query(query)) == {"base", "near"}


def test_datasketch_mode_dedups_like_fast_mode():
    words = [f"w{i}" for i in range(300)]
    a = " ".join(words)
    b = " ".join(words[:150] + ["edited"] + words[151:])
    c = " ".join(reversed(words))
    df = pl.DataFrame({"id": ["a", "b", "c"], "text": [a, b, c]})
    fast = dedup_table(df, DedupSettings(), workers=1)
    compat = dedup_table(df, DedupSettings(mode="datasketch"), workers=1)
    # b is the longer text, so it represents the pair
    assert fast.kept["id"].to_list() == compat.kept["id"].to_list() == ["b", "c"]


def test_fast_mode_differs_from_datasketch_but_estimates_jaccard():
    words = [f"w{i}" for i in range(400)]
    a = " ".join(words)
    b = " ".join(words[:300] + [f"v{i}" for i in range(100)])
    fast = MinHasher().signatures([a, b])
    compat = MinHasher(mode="datasketch").signatures([a, b])
    assert not np.array_equal(fast, compat)  # different shingle hash, as documented
    true_j = 296 / 496  # 5-gram sets: 296 shared, 496 in the union
    for sig in (fast, compat):
        assert abs((sig[0] == sig[1]).mean() - true_j) < 0.15


# -- n-gram hashing ---------------------------------------------------------------------

word = st.sampled_from(["a", "b", "c", "dd", "Éé", "x1", "_"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(word, max_size=12).map(" ".join), min_size=1, max_size=6), st.integers(1, 4)
)
def test_ngram_hashes_match_shingle_text_identity(texts, n):
    tokens = tokenize(texts)
    grams = ngram_hashes(tokens, n, with_positions=True)
    strings = ngram_texts(tokens, n)
    assert len(strings) == len(grams.hashes)
    assert np.array_equal(np.diff(grams.offsets), [len(shingles(t, n)) for t in texts])
    # equal shingle strings <-> equal hashes
    by_text: dict[str, int] = {}
    for s, h in zip(strings, grams.hashes.tolist(), strict=True):
        assert by_text.setdefault(s, h) == h
    assert len(set(by_text.values())) == len(by_text)
    # positions point at the n-gram's first word
    for i in range(len(texts)):
        ws = tokens.words_of(i)
        lo, hi = grams.offsets[i], grams.offsets[i + 1]
        for s, p, ln in zip(
            strings[lo:hi], grams.positions[lo:hi], grams.lengths[lo:hi], strict=True
        ):
            assert " ".join(ws[p : p + ln]) == s


# -- banding -------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=0, max_size=40), st.integers(2, 6))
def test_bucket_pairs_connect_exactly_the_equal_keys(keys, max_bucket):
    keys_a = np.array(keys, dtype=np.uint64)
    rows = np.arange(len(keys), dtype=np.int64) * 3
    pairs = bucket_pairs(keys_a, rows, max_bucket)
    assert (pairs[:, 0] < pairs[:, 1]).all() if len(pairs) else True
    for a, b in pairs.tolist():
        assert keys[a // 3] == keys[b // 3]
    # union-find over the pairs gives exactly the groups of equal keys
    parent = list(range(len(keys)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs.tolist():
        parent[find(a // 3)] = find(b // 3)
    for i in range(len(keys)):
        for j in range(len(keys)):
            assert (find(i) == find(j)) == (keys[i] == keys[j])
    # small buckets yield every pair
    from collections import Counter

    sizes = Counter(keys)
    if all(s <= max_bucket for s in sizes.values()):
        assert len(pairs) == sum(s * (s - 1) // 2 for s in sizes.values())


def test_unique_pairs_merges_bands():
    p1 = np.array([[0, 1], [2, 3]])
    p2 = np.array([[0, 1], [1, 2]])
    assert unique_pairs([p1, p2], 10).tolist() == [[0, 1], [1, 2], [2, 3]]


def test_s_curve_values_and_explain_text():
    assert candidate_probability(0.8, 16, 8) == pytest.approx(0.947, abs=1e-3)
    assert candidate_probability(0.8, 9, 13) == pytest.approx(0.399, abs=1e-3)
    text = explain(num_perm=128, bands=16, rows=8, threshold=0.8, shingle_size=5)
    assert "16 bands x 8 rows" in text and "<- threshold" in text
    assert "9 x 13" in text  # datasketch's choice, for comparison
    assert "False negatives" in text and "False positives" in text


# -- the word and exact-key definitions, vectorised vs reference ----------------------------

unicode_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("ab Z_9.,;-\n\t\x1c\u00a0\u2028\u0085é́ßİΣς—’“”½²ﬁ中文ہندی🙂")),
        st.characters(codec="utf-8"),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.none(), unicode_text), min_size=1, max_size=5))
def test_vectorised_words_and_exact_keys_match_reference(texts):
    import xxhash

    from builder.dedup.normalize import exact_key_text, exact_keys, reference_words

    tokens = tokenize(texts, exact=True)
    for i, t in enumerate(texts):
        assert tokens.words_of(i) == reference_words(t)
        key = xxhash.xxh3_128_intdigest(exact_key_text(t).encode("utf-8"))
        assert (int(tokens.exact[i, 0]) << 64 | int(tokens.exact[i, 1])) == key
    assert np.array_equal(exact_keys(texts), tokens.exact)
    # equal words <-> equal word hashes
    seen: dict[str, int] = {}
    for i in range(len(texts)):
        a, b = tokens.offsets[i], tokens.offsets[i + 1]
        for w, h in zip(tokens.words_of(i), tokens.hashes[a:b].tolist(), strict=True):
            assert seen.setdefault(w, h) == h
    assert len(set(seen.values())) == len(seen)
