"""The dummy destination on its own: which fault meets which item, what it answers on either path, what it
records. Its use behind a real run is in tests/run/test_failure_paths.py."""

from __future__ import annotations

import threading

import pytest

from audience_sync.destinations.batching import encode
from audience_sync.destinations.dummy import DummyDestination, DummyMessageDestination, Fault
from audience_sync.destinations.messages import messages_for
from audience_sync.errors import CredentialsRejected, RetryAfterTooLong
from audience_sync.model import NOT_ATTEMPTED, SENT, Change, ChangeKind, MessageOptions, Outcome, OutcomeStatus


def change(diff_id: int, user_id: str) -> Change:
    return Change(diff_id, 1, "d", "vip", "audience", user_id, None, ChangeKind.ENTERED, None, True, f"m{diff_id}")


CHANGES = [change(1, "u1"), change(2, "u2"), change(3, "u3")]


def test_a_call_fault_wins_over_a_user_fault_which_wins_over_the_default() -> None:
    dummy = DummyDestination(
        "d", by_user={"u2": Fault.refuse("gone")}, by_call={2: Fault.transient()}, default=Fault.refuse("default")
    )
    dummy.by_user["u1"] = Fault()
    assert dummy.deliver(CHANGES) == {
        1: SENT,
        2: Outcome(OutcomeStatus.FAILED, "gone"),
        3: Outcome(OutcomeStatus.FAILED, "default"),
    }
    assert set(dummy.deliver(CHANGES[:1]).values()) == {Outcome(OutcomeStatus.PENDING, "the dummy destination is busy")}
    assert dummy.calls == 2 and [c.user_id for c in dummy.given if isinstance(c, Change)] == ["u1", "u2", "u3", "u1"]


def test_a_stop_carries_what_the_call_answered_and_offers_nothing_after() -> None:
    dummy = DummyDestination("d", by_user={"u2": Fault.stop()})
    with pytest.raises(CredentialsRejected) as raised:
        dummy.deliver(CHANGES)
    assert raised.value.partial == {1: SENT, 2: NOT_ATTEMPTED, 3: NOT_ATTEMPTED}
    assert [a.user_id for a in dummy.answers] == ["u1", "u2"] and dummy.acknowledged() == {"u1"}


def test_a_given_error_and_a_bug_are_raised_as_they_are() -> None:
    late = RetryAfterTooLong("wait an hour", destination="d", retry_after=3600)
    with pytest.raises(RetryAfterTooLong):
        DummyDestination("d", default=Fault.stop(late)).deliver(CHANGES)
    bug = DummyDestination("d", by_user={"u3": Fault.bug("oops")})
    with pytest.raises(RuntimeError, match="oops"):
        bug.deliver(CHANGES)
    assert bug.acknowledged() == {"u1", "u2"} and isinstance(bug.answers[-1].answer, RuntimeError)


def test_a_block_waits_for_its_release_and_one_never_released_is_a_bug() -> None:
    release = threading.Event()
    dummy = DummyDestination("d", by_user={"u1": Fault.block(release)})
    done: list[dict[int, Outcome]] = []
    worker = threading.Thread(target=lambda: done.append(dummy.deliver(CHANGES[:1])))
    worker.start()
    assert dummy.blocked.wait(10) and not done
    release.set()
    worker.join(10)
    assert done == [{1: SENT}]
    stuck = DummyDestination("d", default=Fault.block(threading.Event()), block_timeout=0.01)
    with pytest.raises(RuntimeError, match="never released"):
        stuck.deliver(CHANGES[:1])


def test_on_the_message_path_a_change_is_acknowledged_only_when_all_its_messages_are() -> None:
    send = ("identify", "track")
    dummy = DummyMessageDestination("d", send=send, by_call={1: Fault()}, by_user={"u2": Fault.stop()})
    messages = [(c.diff_id, encode(m)) for c in CHANGES for m in messages_for(c, send, MessageOptions(), ts="t")]
    assert dummy.deliver_messages(messages) == {}  # call 1: all acknowledged, nothing to report
    with pytest.raises(CredentialsRejected) as raised:
        dummy.deliver_messages(messages)
    assert raised.value.partial == {2: NOT_ATTEMPTED, 3: NOT_ATTEMPTED}  # what was not acknowledged
    assert [a.user_id for a in dummy.answers][6:] == ["u1", "u1", "u2"]


def test_it_stands_only_for_the_destination_of_its_name() -> None:
    dummy = DummyDestination("d")
    assert dummy.build(type("C", (), {"name": "d"})()) is dummy
    with pytest.raises(ValueError, match="'e'"):
        dummy.build(type("C", (), {"name": "e"})())
