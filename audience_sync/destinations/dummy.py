"""An in-process destination that answers as it is told: for testing how a run handles a refusal, a transient
failure, a destination that stops, one that hangs, or a bug, with no server behind it.

It is no ``type`` of the registry (no config names it): a caller of ``run_sync`` puts it behind a real run,
``run_sync(config, destination_factory=dummy.build)``, in place of the configured destination of its name.
:class:`DummyDestination` takes :class:`~audience_sync.model.Change` objects (the path Gist takes);
:class:`DummyMessageDestination` takes the messages the state database builds (the path of Segment, the webhook
and the JSONL sink).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import CredentialsRejected, DestinationError
from ..model import NOT_ATTEMPTED, SENT, Change, Encoded, MessageOptions, Outcome, OutcomeStatus, merge
from .base import Destination, MessageDestination

FaultKind = Literal["succeed", "refuse", "transient", "stop", "block", "bug"]


@dataclass(frozen=True)
class Fault:
    """What the dummy does with one change (one message on the message path).

    ``succeed``: acknowledged. ``refuse``: answered ``failed`` with ``reason``, a refusal for good. ``transient``:
    answered ``pending`` with ``reason``, for the next run. ``stop``: raises ``error`` (default
    CredentialsRejected), which stops the destination for the run; what the call answered before it is the error's
    ``partial``. ``block``: waits until ``release`` is set (:attr:`DummyDestination.blocked` is set meanwhile),
    then acknowledges. ``bug``: raises ``RuntimeError(reason)``, an error of no kind the delivery expects.
    """

    kind: FaultKind = "succeed"
    reason: str = ""
    release: threading.Event | None = None
    error: DestinationError | None = None

    @classmethod
    def refuse(cls, reason: str = "refused by the dummy destination") -> Fault:
        return cls("refuse", reason)

    @classmethod
    def transient(cls, reason: str = "the dummy destination is busy") -> Fault:
        return cls("transient", reason)

    @classmethod
    def stop(cls, error: DestinationError | None = None, reason: str = "credentials refused (dummy)") -> Fault:
        return cls("stop", reason, error=error)

    @classmethod
    def block(cls, release: threading.Event) -> Fault:
        return cls("block", release=release)

    @classmethod
    def bug(cls, reason: str = "a bug in the dummy destination") -> Fault:
        return cls("bug", reason)


SUCCEED = Fault()


@dataclass(frozen=True)
class Answer:
    """What the dummy said of one item it was given: an outcome, or the exception it raised there."""

    call: int
    user_id: str
    diff_id: int
    answer: Outcome | BaseException


class DummyDestination(Destination):
    """A destination of changes that answers by plan and records everything.

    The fault for an item: ``by_call[n]`` for every item of the n-th call to deliver (1-based; one call is one
    chunk), else ``by_user[user_id]``, else ``default``. Guarantees: items are handled in the order given, the
    fence (:meth:`check_fence`) is checked before each one, and none after the first that raises; :attr:`given`
    holds every item handed in, in order, and :attr:`answers` what was answered of each handled one, so an item is
    acknowledged only if an ``Answer`` says ``sent``. A DestinationError leaving a call (a ``stop`` fault, or the
    fence's stop) carries the call's answers so far as its ``partial``; a ``bug`` carries nothing.
    """

    def __init__(
        self,
        name: str,
        *,
        by_user: Mapping[str, Fault] | None = None,
        by_call: Mapping[int, Fault] | None = None,
        default: Fault = SUCCEED,
        block_timeout: float = 60.0,
    ) -> None:
        super().__init__(name)
        self.by_user = dict(by_user or {})
        self.by_call = dict(by_call or {})
        self.default = default
        #: a ``block`` fault that waited this long raises RuntimeError: a test that forgot its release fails
        self.block_timeout = block_timeout
        #: set while (and after) a ``block`` fault waits
        self.blocked = threading.Event()
        self.calls = 0
        self.closed = False
        self._given: list[Change | Encoded] = []
        self._answers: list[Answer] = []
        self._lock = threading.Lock()  # a run delivers to several destinations at once, each on its own thread

    @property
    def given(self) -> list[Change | Encoded]:
        """Every change (or message) handed in, in order."""
        with self._lock:
            return list(self._given)

    @property
    def answers(self) -> list[Answer]:
        """What the dummy answered, item by item, in order."""
        with self._lock:
            return list(self._answers)

    def acknowledged(self) -> set[str]:
        """The users of which the dummy acknowledged at least one item."""
        return {a.user_id for a in self.answers if a.answer == SENT}

    def build(self, config: Any) -> DummyDestination:
        """A ``destination_factory`` for ``run_sync``: this dummy for the destination of its name (the same dummy
        every run, so that its records add up); ValueError for another destination."""
        if config.name != self.name:
            raise ValueError(f"the dummy destination {self.name!r} was asked to stand for {config.name!r}")
        return self

    def deliver(self, changes: Sequence[Change]) -> dict[int, Outcome]:
        """The outcome of every change of the call (``pending``, not attempted, for those after a raise)."""
        return self._call(changes, [(c.diff_id, c.user_id) for c in changes], keep_sent=True)

    def close(self) -> None:
        self.closed = True

    def _call(
        self, given: Sequence[Change | Encoded], items: list[tuple[int, str]], *, keep_sent: bool
    ) -> dict[int, Outcome]:
        """Handle ``items`` (diff id, user id) of one call; the merged outcome of each change (the worst of its
        items; items never reached are not attempted), only the unacknowledged ones unless ``keep_sent``."""
        with self._lock:
            self.calls += 1
            call = self.calls
            self._given.extend(given)
        answered: list[tuple[int, Outcome]] = []
        error: Exception | None = None
        for diff_id, user_id in items:
            try:
                self.check_fence()
                outcome = self._apply(self.by_call.get(call) or self.by_user.get(user_id) or self.default)
            except Exception as exc:
                error = exc
                self._note(Answer(call, user_id, diff_id, exc))
                break
            answered.append((diff_id, outcome))
            self._note(Answer(call, user_id, diff_id, outcome))
        unreached = [(diff_id, NOT_ATTEMPTED) for diff_id, _ in items[len(answered) :]]
        outcomes = {d: o for d, o in merge([*answered, *unreached]).items() if keep_sent or o != SENT}
        if error is not None:
            if isinstance(error, DestinationError):
                error.partial = outcomes
            raise error
        return outcomes

    def _note(self, answer: Answer) -> None:
        with self._lock:
            self._answers.append(answer)

    def _apply(self, fault: Fault) -> Outcome:
        if fault.kind == "refuse":
            return Outcome(OutcomeStatus.FAILED, fault.reason)
        if fault.kind == "transient":
            return Outcome(OutcomeStatus.PENDING, fault.reason)
        if fault.kind == "stop":
            raise fault.error or CredentialsRejected(
                f"destination {self.name!r}: {fault.reason}", destination=self.name, status_code=401
            )
        if fault.kind == "bug":
            raise RuntimeError(fault.reason)
        if fault.kind == "block" and fault.release is not None:
            self.blocked.set()
            if not fault.release.wait(self.block_timeout):
                raise RuntimeError(f"the dummy destination {self.name!r} was never released")
        return SENT


class DummyMessageDestination(DummyDestination, MessageDestination):
    """:class:`DummyDestination` on the message path: each message is an item (its user read from its
    ``userId``); a change is acknowledged only when every one of its messages was."""

    def __init__(
        self, name: str, *, send: tuple[str, ...] = ("identify",), options: MessageOptions | None = None, **plan: Any
    ) -> None:
        super().__init__(name, **plan)
        self.send = send
        self.options = options or MessageOptions()

    def deliver(self, changes: Sequence[Change]) -> dict[int, Outcome]:
        """Messages built in Python, delivered as the database's would be."""
        return MessageDestination.deliver(self, changes)

    def deliver_messages(self, messages: Sequence[Encoded]) -> dict[int, Outcome]:
        """The outcome of every change of the call that was not acknowledged."""
        return self._call(messages, [(d, str(json.loads(m)["userId"])) for d, m in messages], keep_sent=False)
