"""The dedup workers' openers equal the diversity report's definition (``opener_exprs``)."""

from __future__ import annotations

import random

import polars as pl
from polars.testing import assert_frame_equal

from builder.dedup.openers import openers
from builder.diversity import opener_exprs

ODD = [
    None,
    "",
    " ",
    "\n\n",
    "...",
    "Hello. World",
    "  Leading spaces. Then more.",
    "no punctuation at all in this one",
    "one",
    "one two three four five",
    "one two three four five six",
    "\nnewline first. then text",
    "first line\nsecond line. end",
    "a.b.c d. e",
    "Ends with a question? yes",
    "Ends at the end.",
    "tabs\tand\u00a0nbsp\u2003em space. Next",
    "x" * 95 + " tail words here",
    "x" * 96 + " tail words here and more",
    "y" * 500,
    " ".join(["w"] * 4) + " " + "z" * 120,
    "İstanbul ÇAĞ ß straße ΣΊΣΥΦΟΣ. Ναι",
    "中文 文本 没有 空格。 第二句",
    "emoji 😀 in 🚀 text! more",
    "e\u0301 combining marks n\u0303 ok. done",
    "snake_case words_with_under scores 12 34 5.6",
    "﹏under﹏ ‿tie‿ connector. punctuation",
    "ａｂｃ fullwidth ＤＥＦ. x",
    "   \t   ",
    "!!! ??? ...",
    "a " * 300,
]


def _reference(texts: list[str | None], words: int) -> pl.DataFrame:
    return pl.DataFrame({"t": texts}, schema={"t": pl.String}).select(opener_exprs("t", words))


def _fuzz(seed: int, count: int) -> list[str | None]:
    rng = random.Random(seed)
    alphabet = list("abcXYZ019_ .!?\n\t,;-") + ["é", "İ", "ß", "Σ", "中", "😀", "\u0301", "\u2003"]
    out: list[str | None] = []
    for _ in range(count):
        if rng.random() < 0.05:
            out.append(None)
            continue
        length = rng.choice([0, 1, 5, 40, 95, 96, 97, 150, 399, 400, 401, 800])
        weights = [8 if c in "abc " else 1 for c in alphabet]
        out.append("".join(rng.choices(alphabet, weights=weights, k=length)))
    return out


def test_openers_equal_definition_on_odd_inputs() -> None:
    for words in (1, 5, 12):
        got = openers(pl.Series("text", ODD, dtype=pl.String), words)
        assert_frame_equal(got, _reference(ODD, words))


def test_openers_equal_definition_on_random_texts() -> None:
    texts = _fuzz(seed=3, count=3000)
    got = openers(pl.Series("text", texts, dtype=pl.String), 5)
    expected = _reference(texts, 5)
    assert_frame_equal(got, expected)
    # The inputs exercise both paths of each column: found in the prefix / redone on the
    # whole head, sentence end found / first line taken, and empty results (nulls).
    assert expected["first_words"].null_count() > 0
    assert expected["first_sentence"].null_count() > 0
    assert expected["first_sentence"].str.contains(r"[.!?]$").any()
    assert (~expected["first_sentence"].drop_nulls().str.contains(r"[.!?]$")).any()


def test_openers_of_no_rows() -> None:
    got = openers(pl.Series("text", [], dtype=pl.String), 5)
    assert_frame_equal(got, _reference([], 5))
    assert got.schema == pl.Schema({"first_words": pl.String, "first_sentence": pl.String})
