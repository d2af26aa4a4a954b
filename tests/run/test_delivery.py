"""The read-ahead helper of the delivery loop: same items, same order, errors in place, one item ahead at most."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from audience_sync.run.deliver import read_ahead


def test_read_ahead_yields_the_same_items_in_order_and_reads_one_ahead() -> None:
    produced: list[int] = []
    threads: set[str] = set()

    def items() -> Iterator[int]:
        for i in range(5):
            produced.append(i)
            threads.add(threading.current_thread().name)
            yield i

    ahead = read_ahead(items(), "test")
    assert next(ahead) == 0
    assert next(ahead) == 1
    assert produced == list(range(len(produced))) and len(produced) <= 3  # at most one beyond what was consumed
    assert list(ahead) == [2, 3, 4]
    assert threads == {next(iter(threads))} and threading.current_thread().name not in threads


def test_read_ahead_raises_the_producers_error_in_its_place() -> None:
    def items() -> Iterator[int]:
        yield 1
        raise RuntimeError("outbox unreadable")

    ahead = read_ahead(items())
    assert next(ahead) == 1
    with pytest.raises(RuntimeError, match="outbox unreadable"):
        next(ahead)


def test_closing_early_stops_reading() -> None:
    produced: list[int] = []

    def items() -> Iterator[int]:
        for i in range(100):
            produced.append(i)
            yield i

    ahead = read_ahead(items())
    assert next(ahead) == 0
    ahead.close()
    assert len(produced) <= 2
