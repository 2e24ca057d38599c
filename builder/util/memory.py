"""Give freed memory back to the operating system between stages.

CPython, glibc's malloc and Arrow's allocator keep freed memory for reuse, so a process's
RSS stays at its high-water mark: after one stage held a partition of texts, the next stage
would start from that peak and the peaks would add up. ``release_memory`` runs the garbage
collector, asks Arrow's pool to release unused memory and glibc to trim its heaps (where
available; elsewhere it is a no-op).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


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


def release_memory() -> None:
    """Collect garbage and return free heap memory to the OS (best effort)."""
    gc.collect()
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except Exception:  # noqa: BLE001 - an allocator without release_unused: nothing to do
        pass
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
