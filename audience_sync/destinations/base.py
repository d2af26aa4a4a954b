"""What every destination adapter is: something that takes a chunk of changes and says what it did with each."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from types import TracebackType

from ..errors import DestinationError
from ..model import SENT, Change, Outcome
from .batching import Encoded, encode
from .messages import MessageOptions, messages_for, timestamp


def _unfenced() -> None:
    """No run lock to check (an adapter used outside a delivery)."""


class Destination(ABC):
    """A destination adapter. It knows its API, nothing of the state database.

    ``deliver`` returns an outcome for each change it was given (keyed by ``diff_id``); a change without one
    stays pending. It raises :class:`~audience_sync.errors.CredentialsRejected` when the destination refuses
    our credentials, so that the run stops calling it at once.

    Before every attempt to send (each HTTP request, retries included; each write of a file) it calls
    :meth:`check_fence`, which raises :class:`~audience_sync.errors.LockLost` once the run lost its lock: the
    delivery sets :attr:`before_attempt` to the lock's check.
    """

    def __init__(self, name: str, *, before_attempt: Callable[[], None] | None = None) -> None:
        self.name = name
        #: called by :meth:`check_fence`; the delivery sets it to its run lock's check
        self.before_attempt: Callable[[], None] = before_attempt or _unfenced

    def check_fence(self) -> None:
        """Call right before each attempt to send: raises LockLost once the run no longer holds its lock."""
        self.before_attempt()

    @abstractmethod
    def deliver(self, changes: Sequence[Change]) -> dict[int, Outcome]:
        """Deliver ``changes``; return what became of each."""

    def close(self) -> None:
        """Release connections and files. Safe to call twice."""

    def abort(self) -> None:
        """Stop at once (a second Ctrl-C): start no request, wait for none under way. Default: :meth:`close`."""
        self.close()

    def __enter__(self) -> Destination:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):  # KeyboardInterrupt: do not wait
            self.abort()
        else:
            self.close()


class MessageDestination(Destination):
    """A destination of Engage-shaped messages that takes them already encoded, as the state database builds
    them (:mod:`audience_sync.store.messages`), so that no per-change Python object is made on its path.

    ``send`` and ``options`` say which messages and in what shape; ``deliver`` (built from changes in Python)
    and ``deliver_messages`` send the same messages.
    """

    send: tuple[str, ...]
    options: MessageOptions

    def deliver(self, changes: Sequence[Change]) -> dict[int, Outcome]:
        """Build the changes' messages in Python (:func:`~.messages.messages_for`) and deliver them."""
        ts = timestamp()
        messages = [(c.diff_id, encode(m)) for c in changes for m in messages_for(c, self.send, self.options, ts=ts)]
        try:
            unacked = self.deliver_messages(messages)
        except DestinationError as exc:  # its partial lists what was not acknowledged: turn it into outcomes
            if exc.partial is not None:
                exc.partial = {c.diff_id: exc.partial.get(c.diff_id, SENT) for c in changes}
            raise
        return {c.diff_id: unacked.get(c.diff_id, SENT) for c in changes}

    @abstractmethod
    def deliver_messages(self, messages: Sequence[Encoded]) -> dict[int, Outcome]:
        """Deliver ``messages`` (``(diff_id, bytes)``, a change's messages together); return the outcome of each
        change that was **not** acknowledged, which includes changes not attempted. Every other change of the
        chunk was acknowledged. A DestinationError carries that same mapping as ``partial``, or None when
        nothing of the chunk was acknowledged."""
