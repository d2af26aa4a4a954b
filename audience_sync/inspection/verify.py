"""Read-back: ``verify`` compares what a destination holds with the snapshot, ``adopt`` seeds the snapshot from it.

Only Gist can be read back (``GET /contacts?user_id=`` per user, or the paged ``GET /contacts``); the reads go
through the destination's own sender, so its rate limit, retries, 429 / ``Retry-After`` and timeouts are those of
delivery, and a 404 is a contact that is not there. Segment, webhooks and JSONL files offer no read: NotReadable
(exit 4). The statements are in ``store/readback.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from ..commands import state_engine
from ..config import Config, GistDestination
from ..destinations.gist import list_from_property, property_value
from ..errors import NotReadable
from ..sources.builder.definitions import TraitDefinition
from ..store import readback, registry
from ..store.lock import run_lock
from ..values import decode, encode

#: what kind of difference a row is
GONE = "contact missing"  # the destination has no contact for a user the snapshot holds a value of
LOST = "key missing"  # the contact is there without the key
EDITED = "value differs"  # the key holds another value (edited by hand, or by another tool)
UNEXPECTED = "unexpected"  # the destination holds a value the snapshot has none of


@dataclass(frozen=True)
class Difference:
    destination: str
    user_id: str
    computation_key: str
    expected: Any
    actual: Any
    kind: str
    #: the contact's email as the destination holds it (used by ``--repair``; not listed)
    email: str | None = None

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        del row["email"]
        return row


@dataclass(frozen=True)
class VerifyResult:
    destination: str
    checked_users: int
    differences: list[Difference]
    repaired: int


def _keys(config: Config, destination: str) -> list[str]:
    return [c.key for c in config.computations if destination in c.destinations]


def _readable(config: Config, destination: str) -> GistDestination:
    dest = config.destination(destination)
    if not isinstance(dest, GistDestination):
        raise NotReadable(
            f"destination {destination!r} ({dest.type}) cannot be read back: only Gist offers a way to read what "
            "it holds; nothing was compared",
            destination=destination,
        )
    return dest


@contextmanager
def _reader(dest: GistDestination) -> Iterator[Any]:
    from ..destinations.gist import GistContacts

    client = GistContacts(dest)
    try:
        yield client
    finally:
        client.close()


def readable_destinations(config: Config, destination: str | None) -> tuple[list[str], list[str]]:
    """The destinations to read back (``destination``, or every configured one) and those that cannot be."""
    names = [destination] if destination else [d.name for d in config.destinations]
    ok = [n for n in names if isinstance(config.destination(n), GistDestination)]
    return ok, [n for n in names if n not in ok]


def _compare(
    destination: str,
    user_id: str,
    keys: list[str],
    want: dict[str, str | None],
    contact: dict[str, Any] | None,
    list_values: str,
) -> Iterator[Difference]:
    held = (contact or {}).get("custom_properties") or {}
    for key in keys:
        expected = want.get(key)
        actual = encode(held[key]) if key in held else None
        # compared as sent: a list value is held in the form `list_values` gives it
        sent = None if expected is None else encode(property_value(decode(expected), list_values))
        if sent == actual:
            continue
        if expected is None:
            kind = UNEXPECTED
        elif contact is None:
            kind = GONE
        elif key not in held:
            kind = LOST
        else:
            kind = EDITED
        email = (contact or {}).get("email")
        yield Difference(
            destination, user_id, key, decode(expected), decode(actual), kind, email if isinstance(email, str) else None
        )


def verify(config: Config, destination: str, *, sample: int | None = None, repair: bool = False) -> VerifyResult:
    """Every user and key whose value at ``destination`` differs from the snapshot: all contacts (paged listing) and
    every snapshot user, or with ``sample`` that many snapshot users read one by one. ``repair`` puts the differing
    snapshot rows in doubt (holding the destination's run lock), so the next run sends those users the truth."""
    dest = _readable(config, destination)
    keys = _keys(config, destination)
    differences: list[Difference] = []
    with state_engine(config) as engine, _reader(dest) as client:
        with engine.connect() as conn:
            users = readback.sample_users(conn, destination, keys, sample) if sample is not None else None
            want = readback.expected(conn, destination, keys, users)
        if users is not None:
            for user_id in users:
                differences += _compare(
                    destination, user_id, keys, want.get(user_id, {}), client.read_contact(user_id), dest.list_values
                )
            checked = len(users)
        else:
            seen = set()
            for contact in client.read_contacts():
                user_id = str(contact.get("user_id") or "")
                if not user_id:
                    continue
                seen.add(user_id)
                differences += _compare(destination, user_id, keys, want.get(user_id, {}), contact, dest.list_values)
            for user_id in sorted(set(want) - seen):
                differences += _compare(destination, user_id, keys, want[user_id], None, dest.list_values)
            checked = len(seen | set(want))
        repaired = 0
        if repair and differences:
            with run_lock(engine, [destination]), engine.begin() as conn:
                repaired = readback.mark_in_doubt(
                    conn, destination, [(d.user_id, d.computation_key, encode(d.actual), d.email) for d in differences]
                )
    differences.sort(key=lambda d: (d.user_id, d.computation_key))
    return VerifyResult(destination, checked, differences, repaired)


@dataclass(frozen=True)
class AdoptResult:
    destination: str
    contacts: int
    adopted: int


def adopt(config: Config, destination: str) -> AdoptResult:
    """Seed the snapshot of ``destination`` with the values it already holds for the configured keys (every
    contact, paged), where the snapshot has none yet, holding the destination's run lock: the next run then sends
    only what differs from what the destination holds."""
    dest = _readable(config, destination)
    comps = [c for c in config.computations if destination in c.destinations]
    keys = {c.key for c in comps}
    lists = {c.key for c in comps if isinstance(c.builder, TraitDefinition) and c.builder.compute.form == "unique_list"}
    rows: list[tuple[str, str, str | None, str | None]] = []
    contacts = 0
    with state_engine(config) as engine, _reader(dest) as client:
        for contact in client.read_contacts():
            user_id = str(contact.get("user_id") or "")
            if not user_id:
                continue
            contacts += 1
            email = contact.get("email") if isinstance(contact.get("email"), str) else None
            for key, value in (contact.get("custom_properties") or {}).items():
                if key in keys and value is not None:
                    if key in lists:  # held as `list_values` wrote it: the snapshot keeps the list itself
                        value = list_from_property(value, dest.list_values)
                    rows.append((user_id, key, encode(value), email))
        with run_lock(engine, [destination]), engine.begin() as conn:
            registry.register(conn, comps)
            adopted = readback.seed(conn, destination, rows)
    return AdoptResult(destination, contacts, adopted)
