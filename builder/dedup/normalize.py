"""Text normalisation, tokenisation and n-gram hashing shared by dedup and decontamination.

One definition, used everywhere (exact dedup, MinHash shingles, benchmark n-grams):

- **normalised text**: Unicode NFKC, then ``str.lower()``.
- **exact key**: the normalised text with every run of whitespace (``str.isspace``)
  collapsed to one space and leading/trailing whitespace removed, hashed with xxh3-128.
- **words**: maximal runs of word characters in the normalised text: Unicode letters (L*),
  marks (M*), numbers (N*) and connector punctuation (Pc, e.g. ``_``). Everything else
  (spaces, punctuation, symbols) separates words and is dropped.
- **n-gram / shingle**: ``n`` consecutive words joined by one space, encoded UTF-8. A text with
  fewer than ``n`` (but at least one) words has one shingle made of all its words.

The implementation works on the UTF-8 bytes of a whole batch at once with numpy (byte
classes from a lookup table, code points of non-ASCII characters decoded vectorised), so a
batch of thousands of documents costs a few array passes and no Python object per word.
Words are hashed with a polynomial over their bytes (mod 2**64, then MurmurHash3's
finaliser); ``ngram_hashes`` combines word hashes into n-gram hashes the same way, so two
shingles get the same hash exactly when their texts are equal (up to 64-bit collisions).
``ngram_texts`` builds the shingle strings themselves for the datasketch-compatible path,
which must hash exactly the bytes datasketch would see. ``reference_words`` is a slow,
obviously-correct version of the word definition, used by the tests.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import xxhash

# Odd 64-bit multipliers: n-grams from word hashes, words from bytes.
_POLY = np.uint64(0x9E3779B97F4A7C15)
_BYTE_POLY = 0x100000001B3
_FMIX64 = (np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35))
_MASK64 = (1 << 64) - 1

# ASCII byte classes. Word bytes: [0-9A-Za-z_] and every byte of a non-ASCII character (the
# non-ASCII separators are removed afterwards from decoded code points).
_WORD_LUT = np.zeros(256, dtype=bool)
for _c in b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_":
    _WORD_LUT[_c] = True
_WORD_LUT[0x80:] = True
_SPACE_LUT = np.zeros(256, dtype=bool)
for _c in range(128):
    _SPACE_LUT[_c] = chr(_c).isspace()


def _in_range(buf: np.ndarray, lo: int, count: int) -> np.ndarray:
    """``lo <= b < lo + count`` for every byte, in one wrapping uint8 subtraction."""
    return (buf - np.uint8(lo)) < np.uint8(count)


def _word_bytes(buf: np.ndarray) -> np.ndarray:
    """``_WORD_LUT[buf]`` by byte arithmetic (a table lookup widens every byte to an index
    first: several times slower on megabytes). Letters are folded to lower case with 0x20."""
    out = buf >= np.uint8(0x80)
    out |= _in_range(buf | np.uint8(0x20), ord("a"), 26)
    out |= _in_range(buf, ord("0"), 10)
    out |= buf == np.uint8(ord("_"))
    return out


def _ascii_space(buf: np.ndarray) -> np.ndarray:
    """``_SPACE_LUT[buf]``: ASCII whitespace is 0x09-0x0D and 0x1C-0x20."""
    out = _in_range(buf, 0x09, 5)
    out |= _in_range(buf, 0x1C, 5)
    return out


_CP_TABLES: tuple[np.ndarray, np.ndarray] | None = None
_CATEGORIES = (
    "Lu Ll Lt Lm Lo Mn Mc Me Nd Nl No Pc Pd Ps Pe Pi Pf Po Sm Sc Sk So Zs Zl Zp Cc Cf Cs Co Cn"
).split()


def _cp_tables() -> tuple[np.ndarray, np.ndarray]:
    """(is_separator, is_space) for every code point; built once per process (~0.1 s)."""
    global _CP_TABLES
    if _CP_TABLES is None:
        sep = np.ones(0x110000, dtype=bool)
        space = np.zeros(0x110000, dtype=bool)
        # Planes 4-13 and 15-16 hold no word characters (unassigned or private use).
        for lo, hi in ((0, 0x40000), (0xE0000, 0xE1000)):
            chars = list(map(chr, range(lo, hi)))
            word = {"Pc"} | {c for c in _CATEGORIES if c[0] in "LMN"}
            sep[lo:hi] = np.fromiter(
                (c not in word for c in map(unicodedata.category, chars)), bool, hi - lo
            )
            space[lo:hi] = np.fromiter(map(str.isspace, chars), dtype=bool, count=hi - lo)
        _CP_TABLES = (sep, space)
    return _CP_TABLES


def is_word_char(ch: str) -> bool:
    """The word-character definition (letters, marks, numbers, connector punctuation)."""
    cat = unicodedata.category(ch)
    return cat[0] in "LMN" or cat == "Pc"


def normalize_text(text: str | None) -> str:
    """NFKC then lowercase; ``None`` becomes the empty string."""
    if not text:
        return ""
    return unicodedata.normalize("NFKC", text).lower()


def reference_words(text: str | None) -> list[str]:
    """The words of one text by the definition, one character at a time (slow; for tests)."""
    out, cur = [], []
    for ch in normalize_text(text):
        if is_word_char(ch):
            cur.append(ch)
        elif cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out


@dataclass
class _Batch:
    """Normalised texts of a batch as one UTF-8 buffer, texts separated by a newline."""

    buf: np.ndarray  # uint8
    starts: np.ndarray  # int64 byte offset of each text
    ends: np.ndarray  # int64
    sep: np.ndarray | None  # bool per byte: part of a non-ASCII separator character
    space: np.ndarray | None  # bool per byte: part of a non-ASCII whitespace character
    cont: np.ndarray | None  # bool per byte: continuation byte of a non-ASCII whitespace


def _batch(texts: Sequence[str | None], normalized: bool) -> _Batch:
    norm = list(texts) if normalized else [normalize_text(t) for t in texts]
    norm = [t or "" for t in norm]
    lengths = np.fromiter(
        (len(t) if t.isascii() else len(t.encode("utf-8", "surrogatepass")) for t in norm),
        dtype=np.int64,
        count=len(norm),
    )
    starts = np.zeros(len(norm), dtype=np.int64)
    if len(norm) > 1:
        np.cumsum(lengths[:-1] + 1, out=starts[1:])
    ends = starts + lengths
    # A newline after every text (a separator and whitespace), so per-text segments
    # [start, end] always fit in the buffer.
    raw = ("\n".join(norm) + "\n").encode("utf-8", "surrogatepass")
    buf = np.frombuffer(raw, dtype=np.uint8)
    sep = space = cont = None
    lead = np.flatnonzero(buf >= 0xC0)
    if len(lead):
        sep_t, space_t = _cp_tables()
        b0 = buf[lead].astype(np.uint32)
        width = np.where(b0 >= 0xF0, 4, np.where(b0 >= 0xE0, 3, 2))
        cp = np.where(width == 2, b0 & 0x1F, np.where(width == 3, b0 & 0x0F, b0 & 0x07))
        for k in (1, 2, 3):
            more = width > k
            cp[more] = (cp[more] << 6) | (buf[lead[more] + k].astype(np.uint32) & 0x3F)
        is_sep = sep_t[cp]
        is_space = space_t[cp]
        sep = np.zeros(len(buf), dtype=bool)
        space = np.zeros(len(buf), dtype=bool)
        cont = np.zeros(len(buf), dtype=bool)
        for k in range(4):
            sel = width > k
            sep[lead[sel & is_sep] + k] = True
            if k == 0:
                space[lead[is_space]] = True
            else:
                cont[lead[sel & is_space] + k] = True
    return _Batch(buf, starts, ends, sep, space, cont)


def _shift_right(mask: np.ndarray) -> np.ndarray:
    out = np.empty_like(mask)
    out[0] = False
    out[1:] = mask[:-1]
    return out


def _shift_left(mask: np.ndarray) -> np.ndarray:
    out = np.empty_like(mask)
    out[-1] = False
    out[:-1] = mask[1:]
    return out


def _segment_counts(mask: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Number of True in each [bounds[i], bounds[i+1]) (last: to the end); bounds sorted,
    all < len(mask). Empty segments count 0 (``reduceat`` alone would not)."""
    counts = np.add.reduceat(mask.view(np.uint8), bounds, dtype=np.int64)
    if len(bounds) > 1:
        counts[:-1][bounds[:-1] == bounds[1:]] = 0
    return counts


def _exact_keys(batch: _Batch) -> np.ndarray:
    buf = batch.buf
    n = len(batch.starts)
    if n == 0:
        return np.zeros((0, 2), dtype=np.uint64)
    space = _ascii_space(buf)
    if batch.space is not None:
        space |= batch.space | batch.cont
    # Drop every whitespace byte that follows whitespace: runs collapse to their first byte,
    # and a non-ASCII whitespace character to its lead byte (its continuation bytes are
    # whitespace after whitespace). The kept whitespace bytes become " ".
    drop = space & _shift_right(space)
    # buf with its whitespace bytes set to " ", as buf ^ ((buf ^ 0x20) & 0xFF-where-space):
    # two passes of byte arithmetic (``copyto(where=)`` or a masked scatter is 2x slower).
    mapped = buf ^ np.uint8(0x20)
    mapped &= space.view(np.uint8) * np.uint8(0xFF)
    mapped ^= buf
    out = mapped[~drop]
    # A byte's position in ``out`` is its position in ``buf`` minus the drops before it.
    dropped = np.flatnonzero(drop)
    lo = batch.starts - np.searchsorted(dropped, batch.starts)
    hi = batch.ends - np.searchsorted(dropped, batch.ends)
    # Strip one leading and one trailing space (runs are already collapsed).
    is_sp = np.append(out == 0x20, False)
    lo = lo + ((lo < hi) & is_sp[lo])
    hi = hi - ((hi > lo) & is_sp[np.maximum(hi - 1, 0)])
    mv = memoryview(out.tobytes())
    digest = xxhash.xxh3_128_digest
    raw = b"".join([digest(mv[a:b]) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)])
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, 2)


def exact_keys(texts: Sequence[str | None], *, normalized: bool = False) -> np.ndarray:
    """xxh3-128 of ``exact_key_text`` of each text, as an ``(n, 2)`` uint64 array.

    Pass ``normalized=True`` when the texts already went through ``normalize_text``.
    """
    return _exact_keys(_batch(texts, normalized))


def exact_key_text(text: str | None) -> str:
    """The text exact dedup compares: normalised, whitespace runs collapsed, stripped."""
    return " ".join(normalize_text(text).split())


def _pow_table(base: int, size: int) -> np.ndarray:
    """base**i mod 2**64 for i < size, by doubling (log2(size) vector multiplies)."""
    out = np.empty(max(size, 1), dtype=np.uint64)
    out[0] = 1
    k = 1
    with np.errstate(over="ignore"):
        while k < size:
            m = min(k, size - k)
            out[k : k + m] = out[:m] * np.uint64(pow(base, k, 1 << 64))
            k *= 2
    return out


@dataclass
class Tokens:
    """The words of a batch of texts: flat arrays plus per-text counts.

    The words of text ``i`` are words ``offsets[i]:offsets[i + 1]``; ``hashes`` holds each
    word's 64-bit hash and ``word_offsets`` where each word's bytes start in ``data`` (every
    word's UTF-8 bytes back to back, gathered on first use: signatures never need them).
    Keeping them flat is what lets a partition of 10,000 documents cost a few arrays
    instead of millions of Python strings.
    """

    counts: np.ndarray  # int64, words per text
    offsets: np.ndarray  # int64, len(counts) + 1
    hashes: np.ndarray  # uint64 per word
    word_offsets: np.ndarray  # int64, len(hashes) + 1
    exact: np.ndarray | None = None  # (n, 2) uint64 exact keys, when computed alongside
    _buf: np.ndarray | None = field(default=None, repr=False)  # the batch's bytes ...
    _word: np.ndarray | None = field(default=None, repr=False)  # ... and its word-byte mask
    _data: np.ndarray | None = field(default=None, repr=False)
    _words: pl.Series | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.counts)

    @property
    def data(self) -> np.ndarray:
        """Every word's UTF-8 bytes back to back (uint8)."""
        if self._data is None:
            assert self._buf is not None and self._word is not None
            self._data = self._buf[self._word]
            self._buf = self._word = None
        return self._data

    @property
    def words(self) -> pl.Series:
        """Every word as a Polars string column (built on first use, zero-copy)."""
        if self._words is None:
            import pyarrow as pa  # only here: signature workers never import it

            arr = pa.LargeStringArray.from_buffers(
                len(self.hashes),
                pa.py_buffer(self.word_offsets.astype(np.int64).tobytes()),
                pa.py_buffer(self.data.tobytes()),
            )
            self._words = pl.Series("word", arr)
        return self._words

    def words_of(self, i: int) -> list[str]:
        """The words of text ``i`` as Python strings (for reports, not for bulk work)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        lo, hi = int(self.word_offsets[a]), int(self.word_offsets[b])
        raw = self.data[lo:hi].tobytes()
        cuts = (self.word_offsets[a : b + 1] - lo).tolist()
        return [raw[cuts[k] : cuts[k + 1]].decode("utf-8") for k in range(b - a)]


_POWERS: tuple[np.ndarray, np.ndarray] = (np.ones(1, np.uint64), np.ones(1, np.uint64))


def _byte_powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """``B**i`` and ``B**-i`` mod 2**64 for ``i < size`` (``B`` is odd, so invertible),
    kept per process and grown by doubling."""
    global _POWERS
    if len(_POWERS[0]) < size:
        n = max(size, 2 * len(_POWERS[0]))
        inverse = pow(_BYTE_POLY, -1, 1 << 64)
        _POWERS = (_pow_table(_BYTE_POLY, n), _pow_table(inverse, n))
    return _POWERS


#: Bytes of the buffer hashed at a time (whole words): the uint64 arrays of one segment and
#: its power tables stay in the cache instead of streaming 8 bytes per text byte through
#: memory (and a worker's tables are 4 MB instead of 50).
_SEGMENT = 1 << 18


def _word_sums(buf: np.ndarray, wstart: np.ndarray, wend: np.ndarray) -> np.ndarray:
    """Per word, ``sum (byte + 1) * B**i`` over its bytes (``i`` from the word's start), mod
    2**64: a prefix sum ``P`` over a segment of words, then ``(P[end] - P[start]) *
    B**-start`` with positions relative to the segment (the same value: ``B`` is odd)."""
    sums = np.empty(len(wstart), dtype=np.uint64)
    longest = int((wend - wstart).max())
    powers, inverse = _byte_powers(max(_SEGMENT, longest) + 1)
    prefix = np.zeros(max(_SEGMENT, longest) + 1, dtype=np.uint64)
    i0 = 0
    with np.errstate(over="ignore"):
        while i0 < len(wstart):
            lo = int(wstart[i0])
            # The words ending within _SEGMENT bytes of this one's start (at least this one).
            i1 = max(i0 + 1, int(np.searchsorted(wend, lo + _SEGMENT, side="right")))
            m = int(wend[i1 - 1]) - lo
            contrib = prefix[1 : m + 1]
            np.add(buf[lo : lo + m], np.uint8(1), out=contrib, dtype=np.uint64)
            contrib *= powers[:m]
            np.cumsum(contrib, out=contrib)
            s = wstart[i0:i1] - lo
            part = prefix[wend[i0:i1] - lo]
            part -= prefix[s]
            part *= inverse[s]
            sums[i0:i1] = part
            i0 = i1
    return sums


def _tokenize_batch(batch: _Batch) -> Tokens:
    buf = batch.buf  # never empty: it ends with a newline
    n = len(batch.starts)
    word = _word_bytes(buf)
    if batch.sep is not None:
        word &= ~batch.sep
    # Word starts and ends are where the mask changes (the buffer ends with a newline, and
    # texts are separated by one, so no word spans two texts or runs off the end): they
    # alternate, start then end. (A boolean mask: ``flatnonzero`` is fastest on those.)
    change = np.empty(len(buf), dtype=bool)
    change[0] = word[0]
    np.not_equal(word[1:], word[:-1], out=change[1:])
    edges = np.flatnonzero(change)
    wstart = edges[0::2]
    counts = np.diff(np.append(np.searchsorted(wstart, batch.starts), len(wstart)))
    if n == 0:
        counts = np.zeros(0, np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    word_offsets = np.zeros(len(wstart) + 1, dtype=np.int64)
    np.cumsum(edges[1::2] - wstart, out=word_offsets[1:])
    if len(wstart):
        hashes = fmix64(_word_sums(buf, wstart, edges[1::2]))
    else:
        hashes = np.zeros(0, dtype=np.uint64)
    return Tokens(
        counts=counts.astype(np.int64),
        offsets=offsets,
        hashes=hashes,
        word_offsets=word_offsets,
        _buf=buf,
        _word=word,
    )


def tokenize(
    texts: Sequence[str | None] | pl.Series, *, normalized: bool = False, exact: bool = False
) -> Tokens:
    """Split texts into normalised words (see the module docstring for the definition).

    Pass ``normalized=True`` when the texts already went through ``normalize_text``; with
    ``exact=True`` the exact keys are computed from the same buffer (``tokens.exact``).
    """
    seq = texts.to_list() if isinstance(texts, pl.Series) else texts
    batch = _batch(seq, normalized)
    tokens = _tokenize_batch(batch)
    if exact:
        tokens.exact = _exact_keys(batch)
    return tokens


def words(text: str | None) -> list[str]:
    """The normalised words of one text (convenience wrapper over ``tokenize``)."""
    return tokenize([text]).words_of(0)


def word_hashes(tokens: Tokens) -> np.ndarray:
    """The 64-bit hash of every word (see ``Tokens.hashes``)."""
    return tokens.hashes


def fmix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (a bijection that spreads every input bit)."""
    s, m1, m2 = _FMIX64
    h = values.astype(np.uint64, copy=True)
    h ^= h >> s
    h *= m1
    h ^= h >> s
    h *= m2
    h ^= h >> s
    return h


def fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, exactly as datasketch (>= 2.0) pre-mixes its input."""
    s1, m1, s2, m2 = _FMIX32
    h = values.astype(np.uint32, copy=True)
    h ^= h >> s1
    h *= m1
    h ^= h >> s2
    h *= m2
    h ^= h >> s1
    return h


@dataclass(frozen=True)
class NGrams:
    """Hashed n-grams of a batch: ``hashes[offsets[i]:offsets[i+1]]`` belong to text ``i``.

    ``positions`` is the index of each n-gram's first word within its text, and ``lengths``
    the number of words it spans (``n``, or fewer for a short text's single n-gram); both
    are empty unless asked for.
    """

    hashes: np.ndarray  # uint64
    positions: np.ndarray  # int64
    lengths: np.ndarray  # int64
    offsets: np.ndarray  # int64, len(texts) + 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def _ngram_layout(
    counts: np.ndarray, n: int, short: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per text: number of n-grams, and which texts are 'short' (one whole-text n-gram)."""
    full = np.where(counts >= n, counts - n + 1, 0)
    is_short = (counts > 0) & (counts < n) if short else np.zeros(len(counts), dtype=bool)
    per_text = full + is_short.astype(np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(per_text, out=offsets[1:])
    return per_text, is_short, offsets


def ngram_offsets(counts: np.ndarray, n: int, *, short: bool = True) -> np.ndarray:
    """Where each text's n-grams start in the flat n-gram arrays (length ``len(counts) + 1``)."""
    return _ngram_layout(np.asarray(counts, dtype=np.int64), n, short)[2]


def ngram_hashes(
    tokens: Tokens,
    n: int,
    *,
    short: bool = True,
    hashes: np.ndarray | None = None,
    with_positions: bool = False,
) -> NGrams:
    """Hash every word n-gram of every text, vectorised.

    The hash of words ``w_0 .. w_{k-1}`` is ``sum_j H(w_j) * P**(k-1-j) mod 2**64`` with
    ``H`` = the 64-bit hash of the word's bytes and ``P`` a fixed odd constant (a Rabin-Karp
    polynomial: a sum of independent uniform 64-bit values, so uniform itself). With
    ``short=True`` a text with ``0 < k < n`` words yields one n-gram of all its words (dedup
    wants this); with ``short=False`` it yields none (decontamination looks for exactly ``n``
    consecutive words). ``positions``/``lengths`` are only filled when ``with_positions``.
    """
    if n < 1:
        raise ValueError("n-gram size must be >= 1")
    wh = word_hashes(tokens) if hashes is None else hashes
    counts = tokens.counts
    starts = tokens.offsets[:-1]
    _, is_short, offsets = _ngram_layout(counts, n, short)
    num_words = len(wh)

    acc = wh.copy()
    short_idx = np.flatnonzero(is_short)
    short_len = counts[short_idx]
    short_vals = np.zeros(len(short_idx), dtype=np.uint64)
    if len(short_idx):
        grab = short_len == 1
        short_vals[grab] = acc[starts[short_idx[grab]]]
    with np.errstate(over="ignore"):
        for j in range(1, n):
            m = num_words - j
            if m <= 0:
                break
            acc[:m] *= _POLY
            acc[:m] += wh[j:]
            if len(short_idx):
                grab = short_len == j + 1
                if grab.any():
                    short_vals[grab] = acc[starts[short_idx[grab]]]

    # Position of every word inside its text, and how many words remain from it.
    pos = np.arange(num_words, dtype=np.int64) - np.repeat(starts, counts)
    remaining = np.repeat(counts, counts) - pos
    keep = remaining >= n
    if len(short_idx):
        keep |= np.repeat(is_short, counts) & (pos == 0)
    out = acc[keep]
    if len(short_idx):
        out[offsets[short_idx]] = short_vals
    if with_positions:
        positions = pos[keep]
        lengths = np.full(len(out), n, dtype=np.int64)
        if len(short_idx):
            lengths[offsets[short_idx]] = short_len
    else:
        positions = lengths = np.zeros(0, dtype=np.int64)
    return NGrams(hashes=out, positions=positions, lengths=lengths, offsets=offsets)


def ngram_texts(tokens: Tokens, n: int, *, short: bool = True) -> list[str]:
    """The shingle strings themselves (words joined by one space), in ``ngram_hashes`` order.

    Used by the datasketch-compatible path, which must hash the exact bytes datasketch sees.
    """
    counts = tokens.counts
    starts = tokens.offsets[:-1]
    _, is_short, offsets = _ngram_layout(counts, n, short)
    total = int(offsets[-1])
    if total == 0:
        return []
    values: list[str] = [""] * total
    long_idx = np.flatnonzero(counts >= n)
    if len(long_idx):
        reps = (counts[long_idx] - n + 1).astype(np.int64)
        within = np.arange(int(reps.sum()), dtype=np.int64) - np.repeat(
            np.cumsum(reps) - reps, reps
        )
        src = np.repeat(starts[long_idx], reps) + within
        dst = np.repeat(offsets[long_idx], reps) + within
        joined = pl.DataFrame({"w": tokens.words}).select(
            pl.concat_str([pl.col("w").shift(-k) for k in range(n)], separator=" ")
        )
        grams = joined.to_series().gather(src).to_list()
        if len(dst) == total:
            return grams
        for k, g in zip(dst.tolist(), grams, strict=True):
            values[k] = g
    for i in np.flatnonzero(is_short).tolist():
        values[int(offsets[i])] = " ".join(tokens.words_of(i))
    return values


def shingles(text: str | None, n: int = 5) -> list[str]:
    """The shingle strings of one text: the reference definition, for tests and users."""
    return ngram_texts(tokenize([text]), n)
