"""Storing outcomes off the caller's thread: ``CacheWriter`` commits batches of cache entries
on a thread of its own, so the caller's thread (which builds requests and handles results,
and is what a large run waits for) does not wait for SQLite.

Why a thread pays: sqlite3 releases the GIL while it steps a statement, and most of the
cost of a commit is there (B-tree inserts, the WAL copies of the pages it dirtied: much of
it system time), so a commit on this thread overlaps the caller's Python work. Batches
submitted while a transaction runs are committed together by the next one (group commit):
the busier the caller, the larger the transactions, and a large transaction dirties each
page of the random ``key`` index once for many rows.

The guarantee is unchanged: a batch's results are handed on only once ``committed`` has
reached its ticket (the engine yields nothing before its cache entry is durable), so a
``kill -9`` never loses a result the caller has seen. ``close`` commits whatever was
submitted before it returns (Ctrl-C, errors and early exits keep finished work).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

from builder.llm.cache import Cache, CacheEntry


class CacheWriter:
    """One writer thread (and SQLite connection) committing submitted batches in order.

    ``submit`` returns a ticket; ``committed`` is the last ticket whose batch is committed
    (tickets count up from 1, and batches commit in submission order). ``wake`` is called
    on the writer thread after every commit and after a failure, so a caller blocked
    waiting for something else notices.
    """

    def __init__(self, cache: Cache, wake: Callable[[], None]) -> None:
        self._cache = cache
        self._wake = wake
        self._cond = threading.Condition()
        self._queue: list[list[CacheEntry]] = []
        self._submitted = 0
        self._committed = 0
        self._error: BaseException | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._main, name="builder-llm-cache", daemon=True)
        self._thread.start()

    def submit(self, entries: list[CacheEntry]) -> int:
        """Queue ``entries`` for the next transaction; their ticket. Raises what stopped the
        writer, if anything did (nothing more can be stored)."""
        with self._cond:
            if self._error is not None:
                raise self._error
            if self._closing:
                raise RuntimeError("the cache writer is closed")
            self._queue.append(entries)
            self._submitted += 1
            self._cond.notify_all()
            return self._submitted

    @property
    def committed(self) -> int:
        """The last ticket committed; raises what stopped the writer once every ticket
        committed before the failure has been read (so none of those results is lost)."""
        with self._cond:
            if self._error is not None:
                raise self._error
            return self._committed

    def close(self) -> BaseException | None:
        """Commit everything submitted, stop the thread, close its connection; the error
        that stopped the writer, if one did (returned, not raised: this runs on the way out
        of a run that may already be unwinding from another exception)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        while self._thread.is_alive():
            self._thread.join(0.2)  # in slices: Ctrl-C still reaches the caller's thread
        return self._error

    def _main(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue:
                        return
                    batches, self._queue = self._queue, []
                    last = self._submitted
                # One transaction for every batch queued meanwhile (GIL released inside).
                self._cache.put_many(itertools.chain.from_iterable(batches))
                with self._cond:
                    self._committed = last
                self._wake()
        except BaseException as exc:  # noqa: BLE001  (handed to the caller's thread)
            with self._cond:
                self._error = exc
            self._wake()
        finally:
            self._cache.close_thread_connection()
