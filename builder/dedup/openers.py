"""The openers of the diversity report (``first_words``, ``first_sentence``), computed fast.

The definition is ``builder.diversity.opener_exprs``; this computes the same values with
less work, for the dedup workers, which compute them for every row they sign:

- ``opener_exprs`` is one eager ``select`` in which both columns appear twice (in the
  ``when`` and in the ``otherwise``), so each regex ran twice. Here every step runs once.
- ``first_words`` extracts every ``\\w+`` run of the 400-character head only to keep the
  first few. Here the words are extracted from a short prefix of the head; when it holds
  more than ``words`` matches, the first ``words`` are complete (a later match starts after
  a non-word character that ends them), so they are the head's first ``words`` too. Only
  the other rows (few words, or very long ones) are extracted from the whole head.
- The fallback of ``first_sentence`` (the first line) is only computed for the rows where
  no sentence end was found.

``tests/test_dedup_openers.py`` checks the result equals ``opener_exprs`` on odd inputs.
"""

from __future__ import annotations

import numpy as np
import polars as pl

#: Openers look at a text's first characters only (``builder.diversity._FIRST_CHARS``).
HEAD_CHARS = 400
#: Characters of the head searched for the first words before falling back to all of it.
_WORD_PREFIX = 96

_WORD = r"\w+"
_SENTENCE = r"^([^\n]*?[.!?])(?:\s|$)"
_FIRST_LINE = r"^([^\n]*)"


def _first_words(head: pl.Series, words: int) -> pl.Series:
    found = head.str.slice(0, _WORD_PREFIX).str.extract_all(_WORD)
    out = found.list.head(words).list.join(" ")
    redo = np.flatnonzero((found.list.len() <= words).to_numpy())
    if len(redo):
        whole = head.gather(redo).str.extract_all(_WORD).list.head(words).list.join(" ")
        out = out.scatter(redo, whole)
    return out


def _first_sentence(head: pl.Series) -> pl.Series:
    stripped = head.str.strip_chars()
    out = stripped.str.extract(_SENTENCE, 1)
    redo = np.flatnonzero(out.is_null().to_numpy())
    if len(redo):
        out = out.scatter(redo, stripped.gather(redo).str.extract(_FIRST_LINE, 1))
    return out.str.replace_all(r"\s+", " ").str.slice(0, 200)


def openers(texts: pl.Series, words: int) -> pl.DataFrame:
    """``first_words`` and ``first_sentence`` of every text, exactly as
    ``texts.to_frame().select(builder.diversity.opener_exprs(texts.name, words))``."""
    head = texts.cast(pl.String).fill_null("").str.slice(0, HEAD_CHARS).str.to_lowercase()
    frame = pl.DataFrame(
        {"first_words": _first_words(head, words), "first_sentence": _first_sentence(head)}
    )
    return frame.with_columns(
        pl.when(pl.col(c) == "").then(None).otherwise(pl.col(c)).alias(c) for c in frame.columns
    )
