"""Producing an iterator's items on a background thread, a few ahead of their consumer."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

#: How often a producer blocked on a full queue looks whether the consumer left (seconds).
_POLL_S = 0.05


def read_ahead(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """``items`` in order, produced on a background thread at most ``depth`` items ahead.

    For a loop that decodes with one library call and encodes with another (both off the
    GIL): dedup's ``kept.parquet`` reads the next record batches while the current one is
    compressed (3.2 -> 2.3 s at 200k documents, the same CPU). The producer's error is
    raised here, at the item it failed on; when the consumer stops early (``close``, an
    error), the producer stops at its next item and ``items`` is closed on its thread.
    """
    done = object()
    slots: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(entry: tuple[object, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put((done, exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
