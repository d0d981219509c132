"""Batches made in a background thread: in order, errors surfaced, and no batch made after the
consumer stops beyond the one already in hand."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from galaxy_core.training.batches import prefetch


def counted(made: list[int], full: threading.Event, depth: int) -> Iterator[int]:
    """0, 1, 2, ...; ``full`` is set once the item that will wait for a free slot is made."""
    for i in range(1000):
        made.append(i)
        if i == depth + 1:
            full.set()
        yield i


def test_items_arrive_in_order_and_an_error_reaches_the_consumer() -> None:
    assert list(prefetch(iter(range(7)))) == list(range(7))

    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        list(prefetch(failing()))


@pytest.mark.parametrize("depth", [1, 2])
def test_a_consumer_that_stops_early_waits_for_no_further_batch(depth: int) -> None:
    made: list[int] = []
    full = threading.Event()
    batches = prefetch(counted(made, full, depth), depth=depth)
    assert next(batches) == 0
    assert full.wait(timeout=60)  # the queue holds `depth` items and one more waits for a slot
    batches.close()
    # The one taken, the queued ones and the one in hand: stopping made no batch after them.
    assert made == list(range(depth + 2))
