"""``builder.util.ahead.read_ahead``: the items in order, the producer's error at its place,
and a consumer that stops early stops the producer (its iterator is closed)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from builder.util.ahead import read_ahead


def test_items_come_in_order_and_a_producer_error_at_its_place() -> None:
    assert list(read_ahead(iter(range(100)), depth=3)) == list(range(100))
    assert list(read_ahead([])) == []

    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("bad batch")

    seen = []
    with pytest.raises(ValueError, match="bad batch"):
        for item in read_ahead(failing()):
            seen.append(item)
    assert seen == [1, 2]


def test_a_consumer_that_stops_early_stops_the_producer() -> None:
    closed = threading.Event()
    produced = []

    def endless() -> Iterator[int]:
        try:
            n = 0
            while True:
                produced.append(n)
                yield n
                n += 1
        finally:
            closed.set()

    items = read_ahead(endless(), depth=2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()  # the consumer leaves: the producer stops and closes its iterator
    assert closed.is_set()
    assert len(produced) <= 3 + 2 + 1  # what was taken, the queue, the one being put
