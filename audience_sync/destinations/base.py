"""What every destination adapter is: something that takes a chunk of changes and says what it did with each."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType

from ..changes import Change, Outcome
from .rendering import LineFormat


class Destination(ABC):
    """A destination adapter. It knows its API, nothing of the state database.

    ``deliver`` returns an outcome for each change it was given (keyed by ``diff_id``); a change without one
    stays pending. It raises :class:`~audience_sync.errors.CredentialsRejected` when the destination refuses
    our credentials, so that the run stops calling it at once.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def deliver(self, changes: Sequence[Change]) -> dict[int, Outcome]:
        """Deliver ``changes``; return what became of each."""

    def line_format(self) -> LineFormat | None:
        """For sinks that only write the messages' JSON text: what to render in SQL (None: deliver changes)."""
        return None

    def write_lines(self, lines: Sequence[str]) -> None:
        """Deliver lines rendered as :meth:`line_format` says; return only once they are acknowledged."""
        raise NotImplementedError(f"destination {self.name!r} takes changes, not rendered lines")

    def close(self) -> None:
        """Release connections and files. Safe to call twice."""

    def __enter__(self) -> Destination:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
