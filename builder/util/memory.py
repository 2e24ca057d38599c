"""Give freed memory back to the operating system between stages.

CPython, glibc's malloc and Arrow's allocator keep freed memory for reuse, so a process's
RSS stays at its high-water mark: after one stage held a partition of texts, the next stage
would start from that peak and the peaks would add up. ``release_memory`` runs the garbage
collector, asks Arrow's pool to release unused memory and glibc to trim its heaps (where
available; elsewhere it is a no-op).

``long_lived_frozen`` wraps a run: the objects alive when it starts (imported modules, the
settings, the taxonomy) outlive it, so they are kept out of the collector's scans for its span.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Iterator

_frozen_depth = 0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def release_memory(*, collect: bool = True) -> None:
    """Collect garbage and return free heap memory to the OS (best effort).

    ``collect=False`` skips the full garbage collection: for a loop that drops tables,
    frames and arrays (freed by reference counting, no cycles) and only needs Arrow's pool
    and glibc's heaps handed back, where the collection walking every object of the build
    would be most of the call's cost.
    """
    if collect:
        gc.collect()
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except Exception:  # noqa: BLE001 - an allocator without release_unused: nothing to do
        pass
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@contextlib.contextmanager
def long_lived_frozen() -> Iterator[None]:
    """Keep the objects alive now out of every garbage collection until the block ends.

    A full collection walks every tracked object, and most of a build's are the modules it
    imported (Polars, Arrow, NumPy: ~65k objects): ``release_memory`` after each stage cost
    ~60 ms on a small build, over a second in all. The libraries every stage uses are
    imported first, then what is alive is frozen (``gc.freeze``); the frozen objects are
    still freed by reference counting, only cycles among them wait for the block's end,
    where ``gc.unfreeze`` hands them back, so a process that builds many times keeps
    nothing. Nested blocks freeze once.
    """
    global _frozen_depth
    if _frozen_depth:
        _frozen_depth += 1
        try:
            yield
        finally:
            _frozen_depth -= 1
        return
    import numpy  # noqa: F401 - imported by every stage; long-lived once imported
    import polars  # noqa: F401
    import pyarrow  # noqa: F401

    gc.collect()
    gc.freeze()
    _frozen_depth = 1
    try:
        yield
    finally:
        _frozen_depth = 0
        gc.unfreeze()
