"""WordLlama's tokenizer through the piece cache gives the whole-text tokenizer's ids and the
same embeddings, whatever the text and however small the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from builder.quality.embed import WordLlamaEmbedder
from builder.quality.pieces import PieceTokenizer

ROOT = Path(__file__).resolve().parent.parent

ODD = [
    "",
    " ",
    "   ",
    "word",
    " leading space",
    "trailing space ",
    "two  spaces and   three",
    "tabs\tand\nnewlines\n\n  indented block\n    deeper",
    "naïve café — 数学 😀 emoji and accents",
    "a literal \u2581 block char and \u2581\u2581 two",
    "def f(x):\n    return {'k': [1, 2]}  # comment\n",
    "Ends with newline\n",
    "x" * 3000,
]


def _texts() -> list[str]:
    """Prose (the README and the design notes), code (this package) and odd whitespace."""
    texts = list(ODD)
    for path in [ROOT / "README.md", *sorted((ROOT / "builder" / "quality").glob("*.py"))]:
        body = path.read_text(encoding="utf-8")
        texts += [body[i : i + 1500] for i in range(0, len(body), 1500)]
    return texts


@pytest.fixture(scope="module")
def embedder() -> WordLlamaEmbedder:
    return WordLlamaEmbedder()


@pytest.mark.parametrize("cache_limit", [262_144, 50])
def test_piece_ids_are_the_whole_text_tokenizers(
    embedder: WordLlamaEmbedder, cache_limit: int
) -> None:
    texts = _texts()
    whole = embedder.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    pieces = PieceTokenizer(embedder.tokenizer, cache_limit=cache_limit)
    for _ in range(2):  # a cold cache, then a warm (or emptied) one
        ids, lengths = pieces.encode(texts)
        assert lengths.tolist() == [len(e.ids) for e in whole]
        assert ids.tolist() == [i for e in whole for i in e.ids]


def test_the_cache_stays_within_its_limit(embedder: WordLlamaEmbedder) -> None:
    pieces = PieceTokenizer(embedder.tokenizer, cache_limit=50)
    whole = PieceTokenizer(embedder.tokenizer)
    sizes = []
    for i in range(40):
        text = " ".join(f"word{i}x{j}" for j in range(8))
        assert pieces.encode([text])[0].tolist() == whole.encode([text])[0].tolist()
        sizes.append(len(pieces._index))
    assert max(sizes) <= 50
    assert any(b < a for a, b in zip(sizes, sizes[1:], strict=False))  # emptied, refilled


def test_none_and_empty_texts_have_no_tokens(embedder: WordLlamaEmbedder) -> None:
    ids, lengths = PieceTokenizer(embedder.tokenizer).encode([None, "", "one two", None])
    assert lengths.tolist()[0] == 0 and lengths.tolist()[1] == 0 and lengths.tolist()[3] == 0
    assert lengths[2] > 0 and len(ids) == lengths[2]


def test_embeddings_equal_whole_text_tokenizing(embedder: WordLlamaEmbedder) -> None:
    """The vectors are those of tokenizing each whole text, as WordLlama's tokenizer does (the
    token vectors summed per piece, then per text: equal up to float rounding)."""
    from scipy.sparse import csr_matrix

    texts = _texts()
    got = embedder.embed(texts)
    encoded = embedder.tokenizer.encode_batch_fast(
        [t[: embedder.max_chars] for t in texts], add_special_tokens=False
    )
    lengths = np.array([len(e.ids) for e in encoded])
    flat = np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encoded])
    indptr = np.concatenate(([0], np.cumsum(lengths)))
    counts = csr_matrix(
        (np.ones(len(flat), dtype=np.float32), flat, indptr),
        shape=(len(texts), embedder.matrix.shape[0]),
    )
    want = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    nonempty = lengths > 0
    want[nonempty] = np.asarray(counts @ embedder.matrix)[nonempty] / lengths[nonempty, None]
    norms = np.linalg.norm(want, axis=1, keepdims=True)
    np.divide(want, norms, out=want, where=norms > 0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert not got[0].any() and got[3].any()  # "" is the zero vector, "word" is not
