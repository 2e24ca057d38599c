"""Seeded synthetic corpora with planted exact and near duplicates.

Used by the tests and ``bench/dedup.py`` to measure precision and recall, and by anyone who
wants to see how the dedup parameters behave on documents like theirs before running on
real data. Documents are sentences of words drawn from a Zipf-distributed made-up
vocabulary; planted copies are either exact (same text up to case and whitespace, which
normalisation removes) or near (word edits at a chosen rate, scattered over the document or
concentrated in a few blocks, as an edited paragraph would be).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

_SYLLABLES = (
    "ba be bi bo bu ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu ra re ri ro ru "
    "sa se si so su ta te ti to tu va ve vi vo vu za ze zi zo zu dra gre pli stro qua"
).split()


@dataclass(frozen=True)
class Vocabulary:
    """Made-up words with Zipf probabilities, in four spellings (plain, Capitalised, with a
    period, both) so sentences can be assembled with numpy indexing alone."""

    spellings: np.ndarray  # object array (4, V): plain, cap, dot, cap+dot
    cdf: np.ndarray

    @classmethod
    def make(cls, size: int = 20_000, seed: int = 0, exponent: float = 1.05) -> Vocabulary:
        rng = np.random.default_rng(seed)
        syl = np.array(_SYLLABLES, dtype=object)
        seen: set[str] = set()
        words: list[str] = []
        while len(words) < size:
            k = int(rng.integers(1, 5))
            w = "".join(syl[rng.integers(0, len(syl), k)])
            if w not in seen:
                seen.add(w)
                words.append(w)
        plain = np.array(words, dtype=object)
        cap = np.array([w.capitalize() for w in words], dtype=object)
        dot = np.array([w + "." for w in words], dtype=object)
        capdot = np.array([w.capitalize() + "." for w in words], dtype=object)
        p = 1.0 / np.arange(1, size + 1) ** exponent
        return cls(np.stack([plain, cap, dot, capdot]), np.cumsum(p / p.sum()))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        idx = np.searchsorted(self.cdf, rng.random(n), side="right")
        return np.minimum(idx, len(self.cdf) - 1).astype(np.int32)

    def render(self, ids: np.ndarray, rng: np.random.Generator) -> str:
        """Words as sentences of 6-20 words: Capitalised first word, period at the end."""
        n = len(ids)
        ends = np.zeros(n, dtype=bool)
        cuts = np.cumsum(rng.integers(6, 21, n // 6 + 1))
        ends[cuts[cuts < n] - 1] = True
        if n:
            ends[-1] = True
        starts = np.zeros(n, dtype=bool)
        if n:
            starts[0] = True
            starts[1:] = ends[:-1]
        variant = starts.astype(np.int8) + 2 * ends.astype(np.int8)
        return " ".join(self.spellings[variant, ids].tolist())


def edit_words(
    ids: np.ndarray, rate: float, style: str, vocab: Vocabulary, rng: np.random.Generator
) -> np.ndarray:
    """Edit about ``rate`` of the words: substitutions, deletions and insertions.

    ``scattered`` edits words independently at random positions; ``block`` concentrates
    them in one to three contiguous spans (a rewritten sentence or paragraph).
    """
    n = len(ids)
    n_edits = max(1, int(round(rate * n)))
    if style == "scattered":
        pos = np.sort(rng.choice(n, size=min(n, n_edits), replace=False))
        ops = rng.random(len(pos))
        fresh = vocab.sample(rng, len(pos)).tolist()
        out = list(ids.tolist())
        for p, op, w in zip(pos[::-1].tolist(), ops.tolist(), fresh, strict=True):
            if op < 0.5:
                out[p] = w
            elif op < 0.75:
                del out[p]
            else:
                out.insert(p, w)
        return np.array(out, dtype=np.int32)
    if style != "block":
        raise ValueError(f"unknown edit style {style!r}")
    blocks = int(rng.integers(1, 4))
    sizes = np.maximum(
        1,
        np.diff(
            np.sort(rng.choice(n_edits + 1, blocks - 1, replace=True)), prepend=0, append=n_edits
        ),
    )
    out = ids.copy()
    for size in sizes.tolist():
        size = min(size, len(out) - 1)
        start = int(rng.integers(0, max(1, len(out) - size)))
        op = rng.random()
        fresh = vocab.sample(rng, size)
        if op < 0.6:
            out = np.concatenate([out[:start], fresh, out[start + size :]])
        elif op < 0.8:
            out = np.concatenate([out[:start], out[start + size :]])
        else:
            out = np.concatenate([out[:start], fresh, out[start:]])
    return out.astype(np.int32)


def synthetic_corpus(
    n_docs: int,
    *,
    seed: int = 0,
    exact_frac: float = 0.05,
    near_frac: float = 0.15,
    edit_range: tuple[float, float] = (0.05, 0.15),
    words: tuple[int, int] = (300, 600),
    vocab: Vocabulary | None = None,
    id_prefix: str = "doc",
    start: int = 0,
) -> pl.DataFrame:
    """A shuffled corpus of ``n_docs`` rows with planted duplicates and their ground truth.

    Columns: ``id``, ``text``, ``family`` (id of the original a copy was made from, or the
    row's own id), ``planted`` (``original`` | ``exact`` | ``near``; originals without
    copies are plain ``original`` too), ``edit_rate`` and ``edit_style`` for near copies.
    ``start`` numbers ids from an offset, so partitions of one big corpus can be generated
    separately and concatenated.
    """
    rng = np.random.default_rng(seed)
    vocab = vocab or Vocabulary.make(seed=seed)
    n_exact = int(round(n_docs * exact_frac))
    n_near = int(round(n_docs * near_frac))
    n_orig = n_docs - n_exact - n_near
    if n_orig < 1:
        raise ValueError("exact_frac + near_frac leave no originals")
    lengths = rng.integers(words[0], words[1] + 1, n_orig)
    flat = vocab.sample(rng, int(lengths.sum()))
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    originals = [flat[bounds[i] : bounds[i + 1]] for i in range(n_orig)]

    texts: list[str] = [vocab.render(o, rng) for o in originals]
    family = list(range(n_orig))
    planted = ["original"] * n_orig
    rate = [None] * n_orig
    style: list[str | None] = [None] * n_orig
    sources = rng.integers(0, n_orig, n_exact + n_near)
    for k, src in enumerate(sources.tolist()):
        if k < n_exact:
            t = texts[src]
            variant = k % 3
            if variant == 0:
                t = t.upper()
            elif variant == 1:
                t = "  " + t.replace(". ", ".\n\n")
            texts.append(t)
            planted.append("exact")
            rate.append(0.0)
            style.append(None)
        else:
            r = float(rng.uniform(*edit_range))
            s = "scattered" if k % 2 == 0 else "block"
            texts.append(vocab.render(edit_words(originals[src], r, s, vocab, rng), rng))
            planted.append("near")
            rate.append(round(r, 4))
            style.append(s)
        family.append(src)
    order = rng.permutation(n_docs)
    ids = np.empty(n_docs, dtype=object)
    ids[order] = [f"{id_prefix}-{start + i:08d}" for i in range(n_docs)]
    frame = pl.DataFrame(
        {
            "id": ids.tolist(),
            "text": texts,
            "family_row": family,
            "planted": planted,
            "edit_rate": pl.Series(rate, dtype=pl.Float64),
            "edit_style": pl.Series(style, dtype=pl.String),
        }
    )
    frame = frame.with_columns(pl.col("id").gather(pl.col("family_row")).alias("family")).drop(
        "family_row"
    )
    return frame.sort("id")


def true_jaccard(a: str | None, b: str | None, shingle_size: int = 5) -> float:
    """Exact Jaccard similarity of two texts' shingle sets (the quantity MinHash estimates)."""
    from builder.dedup.normalize import shingles

    sa, sb = set(shingles(a, shingle_size)), set(shingles(b, shingle_size))
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)
