"""WordLlama's tokenizer at corpus speed: each distinct word is tokenized once.

WordLlama uses the Llama 2 tokenizer, whose Hugging Face form has no pre-tokenizer: it
prepends ``▁`` to a text, replaces every space with ``▁`` and runs BPE over the whole text as
one word, ~0.5 ms for a 1.5 KB document. No Llama 2 token spans the start of a ``▁`` run
after another character, so a text's tokens are the concatenation of the tokens of its
*pieces*: the maximal substrings that start with a ``▁`` run (``▁▁▁if``, ``▁word.``).
``PieceTokenizer`` splits a batch into pieces with Polars, looks each distinct piece up in a
bounded cache of token ids and tokenizes only the ones it has not seen, then lays the ids
out again in text order (``encode``). The ids are exactly the whole-text tokenizer's (tests
compare them on prose, code and odd whitespace); prose repeats its words, so after the first
batches almost every piece is a cache hit (bench/quality.py measures it). ``token_sums``
sums an embedding table's rows over each text's tokens from the same pieces, a distinct
piece's rows once per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

SPACE = "\u2581"
#: A piece: a run of ``▁`` and the characters up to the next one.
_PIECE = f"{SPACE}+[^{SPACE}]*"


class PieceTokenizer:
    """Token ids of texts through a cache of distinct pieces (see the module docstring).

    ``tokenizer`` is the whole-text ``tokenizers.Tokenizer`` (its normalizer prepends and
    replaces ``▁``); ``cache_limit`` bounds the pieces kept (the cache is emptied when a batch
    would pass it), about 40 bytes of ids and index per piece plus the piece's text.
    """

    def __init__(self, tokenizer: Any, *, cache_limit: int = 262_144) -> None:
        from tokenizers import Tokenizer

        self.raw = Tokenizer.from_str(tokenizer.to_str())
        self.raw.normalizer = None  # pieces already carry their ``▁``
        self.raw.no_padding()
        self.raw.no_truncation()
        self.cache_limit = cache_limit
        self._clear()

    def _clear(self) -> None:
        self._index: dict[str, int] = {}
        self._ids = np.zeros(0, dtype=np.int32)  # every cached piece's ids, one after another
        self._start = np.zeros(0, dtype=np.int64)
        self._len = np.zeros(0, dtype=np.int64)

    def _lookup(self, words: list[str]) -> np.ndarray:
        """Cache indices of the pieces ``▁ + word``, tokenizing the new ones."""
        if len(self._index) + len(words) > self.cache_limit:
            self._clear()
        index = self._index
        missing = [w for w in words if w not in index]
        if missing:
            encoded = self.raw.encode_batch_fast(
                [SPACE + w for w in missing], add_special_tokens=False
            )
            ids = [np.asarray(e.ids, dtype=np.int32) for e in encoded]
            lengths = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
            first = len(self._len)
            self._start = np.concatenate(
                (self._start, len(self._ids) + np.cumsum(lengths) - lengths)
            )
            self._len = np.concatenate((self._len, lengths))
            self._ids = np.concatenate((self._ids, *ids))
            index.update(zip(missing, range(first, first + len(missing)), strict=True))
        return np.fromiter((index[w] for w in words), dtype=np.int64, count=len(words))

    def _words(self, texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The batch's pieces in text order: each one's text index, its number among the
        batch's distinct pieces, and those distinct pieces (each without its first ``▁``)."""
        frame = (
            pl.DataFrame({"t": pl.Series(list(texts), dtype=pl.String)})
            .with_row_index("doc")
            .filter(pl.col("t").fill_null("") != "")
        )
        t = pl.col("t")
        # A text without a space run, a leading space or a literal ``▁`` splits at spaces:
        # each word w is the piece ``▁w``. The others go through the piece pattern.
        runs = (
            t.str.contains("  ", literal=True)
            | t.str.starts_with(" ")
            | t.str.contains(SPACE, literal=True)
        )
        parts = [frame.filter(~runs).select("doc", t.str.split(" ").alias("w"))]
        odd = frame.filter(runs)
        if odd.height:
            pieces = (SPACE + t.str.replace_all(" ", SPACE, literal=True)).str.extract_all(_PIECE)
            # the cache is keyed by the piece without its first ``▁``, as the split words are
            parts.append(odd.select("doc", pieces.list.eval(pl.element().str.slice(1)).alias("w")))
        words = pl.concat(parts).sort("doc", maintain_order=True).explode("w")
        if not words.height:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), []
        # Each distinct piece numbered by a categorical of its own (a fresh mapping, freed
        # with it): no unique-then-join over every piece of the batch.
        categories = pl.Categories.random()
        coded = words["w"].cast(pl.Categorical(categories))
        distinct = categories.to_series().to_list()  # while ``coded`` holds the mapping
        codes = coded.to_physical().to_numpy().astype(np.int64)
        return words["doc"].to_numpy().astype(np.int64), codes, distinct

    def _ids_of(self, cached: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The token ids of the cached pieces ``cached``, one after another, and each one's
        number of tokens."""
        lengths = self._len[cached]
        total = int(lengths.sum())
        # positions of every token in ``_ids``: each piece's start, then consecutive
        offsets = np.repeat(self._start[cached] - (np.cumsum(lengths) - lengths), lengths)
        return self._ids[offsets + np.arange(total)].astype(np.int64), lengths

    def encode(self, texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, lengths)``: every text's token ids, one text after another (int64), and
        each text's number of tokens; a null or empty text has none."""
        doc, codes, distinct = self._words(texts)
        if not len(doc):
            return np.zeros(0, dtype=np.int64), np.zeros(len(texts), dtype=np.int64)
        ids, lengths = self._ids_of(self._lookup(distinct)[codes])
        per_text = np.bincount(doc, weights=lengths, minlength=len(texts)).astype(np.int64)
        return ids, per_text

    def token_sums(
        self, texts: Sequence[str | None], table: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(sums, lengths)``: for each text the sum of the rows of ``table`` (vocabulary x
        d) of its tokens (ids past the table clipped to its last row), and its number of
        tokens. Each distinct piece's row sum is taken once, then each text sums its pieces'
        (a texts x pieces matrix of counts times a pieces x d one): fewer rows added than
        one per token, and no token list per text. The sums equal the per-token sums up to
        float rounding (another order of additions)."""
        from scipy.sparse import csr_matrix

        doc, codes, distinct = self._words(texts)
        if not len(doc):
            return np.zeros((len(texts), table.shape[1]), np.float32), np.zeros(
                len(texts), np.int64
            )
        ids, lengths = self._ids_of(self._lookup(distinct))
        vocab = table.shape[0]
        bounds = np.concatenate(([0], np.cumsum(lengths)))
        piece_tokens = csr_matrix(
            (np.ones(len(ids), np.float32), np.clip(ids, 0, vocab - 1), bounds),
            shape=(len(distinct), vocab),
        )
        # pieces come in text order: each text's row of counts is its pieces' codes, repeats
        # left in (the product sums them), so no conversion from coordinates and no sort
        rows = np.concatenate(([0], np.cumsum(np.bincount(doc, minlength=len(texts)))))
        counts = csr_matrix(
            (np.ones(len(codes), np.float32), codes, rows), shape=(len(texts), len(distinct))
        )
        sums = np.asarray(counts @ np.asarray(piece_tokens @ table), dtype=np.float32)
        per_text = np.bincount(doc, weights=lengths[codes], minlength=len(texts))
        return sums, per_text.astype(np.int64)
