"""The pacing and the threads of an HTTP destination: a token bucket for its rate limit, a worker pool for its
concurrency, and what a pool's calls settled when an error stopped the destination part way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..errors import DestinationError
from ..model import Outcome, merge
from .batching import Encoded, send_halving, unacknowledged

T = TypeVar("T")
R = TypeVar("R")


class TokenBucket:
    """Paces calls to ``rate`` per second, allowing bursts of ``burst`` calls; safe to share between threads.

    Over any long stretch the number of calls is at most ``rate * seconds + burst``.
    """

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = burst
        self._updated = clock()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Block until a call may be made, then take its token."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= 1
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)


class WorkerPool:
    """At most ``concurrency`` threads running one destination's calls, and the outcomes they settled."""

    def __init__(self, destination: str, concurrency: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"send-{destination}")

    def settle(
        self,
        fn: Callable[[T], list[tuple[int, Outcome]]],
        items: Iterable[T],
        earlier: Sequence[tuple[int, Outcome]] = (),
    ) -> dict[int, Outcome]:
        """Run ``fn`` over ``items`` on the pool and merge the outcomes per change (with ``earlier`` ones).

        When an error stopped the destination (credentials refused, a Retry-After over the cap), it is raised
        carrying the merged outcomes of what completed, so that the caller records them.
        """
        done, refused = self.map_settled(fn, items)
        outcomes = merge([*earlier, *done])
        if refused is not None:
            refused.partial = outcomes
            raise refused
        return outcomes

    def settle_batches(
        self,
        post: Callable[[Sequence[Encoded]], object],
        batches: Sequence[Sequence[Encoded]],
        earlier: Sequence[tuple[int, Outcome]] = (),
    ) -> dict[int, Outcome]:
        """Post ``batches`` on the pool with :func:`~.batching.send_halving`; return the outcome of each change
        that was not acknowledged (merged with ``earlier`` ones): every other change of the batches was.

        When an error stopped the destination (credentials refused, a Retry-After over the cap), it is raised with
        that same mapping as its ``partial``, the changes of batches that did not complete counting as not attempted.
        """
        done, refused = self.map_settled(lambda item: [(item[0], send_halving(post, item[1]))], enumerate(batches))
        outcomes = unacknowledged(batches, done, earlier)
        if refused is not None:
            refused.partial = outcomes
            raise refused
        return outcomes

    def map_settled(self, fn: Callable[[T], list[R]], items: Iterable[T]) -> tuple[list[R], DestinationError | None]:
        """Run ``fn`` over ``items`` on the worker pool and concatenate the results of the calls that finished.

        When an error stopped the destination (credentials refused, a Retry-After over the cap), it is returned
        beside the results of the items that completed, so that what was delivered before it can still be recorded.
        """

        def run(item: T) -> tuple[list[R], DestinationError | None]:
            try:
                return fn(item), None
            except DestinationError as exc:
                if not exc.stops_destination:
                    raise
                return [], exc

        done: list[R] = []
        refused: DestinationError | None = None
        for results, error in self._pool.map(run, items):
            done.extend(results)
            refused = refused or error
        return done, refused

    def shutdown(self, *, wait: bool) -> None:
        """Stop the threads; without ``wait``, cancel the calls not started and return at once."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
