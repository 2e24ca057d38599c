"""WordLlama's tokenizer at corpus speed: each distinct word is tokenized once.

WordLlama uses the Llama 2 tokenizer, whose Hugging Face form has no pre-tokenizer: it
prepends ``▁`` to a text, replaces every space with ``▁`` and runs BPE over the whole text as
one word, ~0.5 ms for a 1.5 KB document. No Llama 2 token spans the start of a ``▁`` run
after another character, so a text's tokens are the concatenation of the tokens of its
*pieces*: the maximal substrings that start with a ``▁`` run (``▁▁▁if``, ``▁word.``).
``PieceTokenizer`` splits a batch into pieces with Polars, looks each distinct piece up in a
bounded cache of token ids and tokenizes only the ones it has not seen, then lays the ids
out again in text order. The ids are exactly the whole-text tokenizer's (tests compare them
on prose, code and odd whitespace), so the embeddings do not change; prose repeats its words,
so after the first batches almost every piece is a cache hit (bench/quality.py measures it).
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

    def encode(self, texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, lengths)``: every text's token ids, one text after another (int64), and
        each text's number of tokens; a null or empty text has none."""
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
            return np.zeros(0, dtype=np.int64), np.zeros(len(texts), dtype=np.int64)
        # Each distinct word numbered by a categorical of its own (a fresh mapping, freed
        # with it): no unique-then-join over every word of the batch.
        categories = pl.Categories.random()
        coded = words["w"].cast(pl.Categorical(categories))
        distinct = categories.to_series().to_list()  # while ``coded`` holds the mapping
        cached = self._lookup(distinct)[coded.to_physical().to_numpy()]
        lengths = self._len[cached]
        total = int(lengths.sum())
        # positions of every token in ``_ids``: each piece's start, then consecutive
        offsets = np.repeat(self._start[cached] - (np.cumsum(lengths) - lengths), lengths)
        ids = self._ids[offsets + np.arange(total)].astype(np.int64)
        per_text = np.bincount(
            words["doc"].to_numpy(), weights=lengths, minlength=len(texts)
        ).astype(np.int64)
        return ids, per_text
