"""SIGTERM and SIGINT for whoever starts runs: the first asks for a clean stop, a second stops at once.

The CLI's `run` and `resync` and the scheduler share this one handler; they differ only in what "at once"
means (``on_second``): a run in this thread is interrupted (KeyboardInterrupt, recorded as failed), a
scheduler whose run is on another thread exits the process (the next run marks it abandoned).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def graceful_stop(
    on_second: Callable[[str], None], finishing: str, stop: threading.Event | None = None
) -> Iterator[threading.Event]:
    """An event set by the first SIGTERM or SIGINT while inside (``stop`` when given), logging
    ``"<SIGNAL>: <finishing>"``; a second signal calls ``on_second`` with the signal's name. The handlers that
    were installed before are put back on the way out. Call from the main thread (Python's rule for signals)."""
    event = stop if stop is not None else threading.Event()

    def handle(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if event.is_set():
            on_second(name)
            return
        event.set()
        log.warning("%s: %s", name, finishing)

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield event
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def interrupt(_name: str) -> None:
    """``on_second`` for a run in the main thread: interrupt it where it is (it is still recorded, as failed)."""
    raise KeyboardInterrupt
