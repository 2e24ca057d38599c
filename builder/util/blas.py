"""One BLAS thread for code that already runs its products on several Python threads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Single-threaded BLAS and LAPACK (numpy's and scipy's OpenBLAS) for the block.

    OpenBLAS starts a thread per core for each product or eigenvalue problem, and between
    calls its threads spin. Code that spreads small problems over its own threads (the
    diversity summary's Vendi scores, semantic dedup's clusters) then burns CPU in that
    spin: the summary's Vendi passes at 200k documents cost 12.8 CPU s with OpenBLAS's
    threads and 6.2 with one, in the same time. (OpenBLAS yields while it spins, so in a
    busy build the spin mostly took CPU nothing else wanted: the build was no faster.)
    The limit is process-wide while the block runs, and restored after it.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
