"""A generated event log for the builder's tests, loaded into SQLite and PostgreSQL in every storage layout the
builder reads (a JSON properties column: SQLite text, PostgreSQL json and jsonb; properties as typed columns),
and read back as :class:`tests.builder_reference.Event` / ``Profile`` for the reference.

The log is seeded random behaviour plus hand-made cases: events exactly at the window edges, ties at one
instant, values repeated for most_frequent, nulls, absent properties, values of the wrong type, text that sorts
by code point ('B' < 'a' < 'é'), a user with events but no profile, profiles without events or id.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import random
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine, text

from audience_sync.values import _plain
from tests.builder_reference import Event, Profile

AS_OF = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
SECOND = dt.timedelta(seconds=1)
CATEGORIES = ["tea", "Tea", "B", "a", "é", "coffee", "COFFEE beans", "Zed", "ä", "b"]
PROPERTY_COLUMNS = ("category", "amount", "flag", "qty")
_ABSENT = object()


@dataclass
class RawEvent:
    user: str | None
    event: str
    ts: dt.datetime
    props: dict[str, Any] = field(default_factory=dict)


@dataclass
class RawProfile:
    id: str | None
    email: str | None
    country: str | None
    age: int | None
    score: float | None
    vip: bool | None


def _random_value(rng: random.Random, prop: str) -> Any:
    roll = rng.random()
    if roll < 0.08:
        return _ABSENT
    if roll < 0.12:
        return None  # JSON null
    if prop == "category":
        return rng.choice(CATEGORIES) if roll < 0.95 else 5
    if prop == "amount":
        if roll < 0.5:
            return rng.randint(1, 60)
        return round(rng.uniform(0, 80), rng.choice([1, 2])) if roll < 0.97 else "12"
    if prop == "flag":
        return rng.random() < 0.5 if roll < 0.96 else "true"
    return rng.randint(0, 9) if roll < 0.9 else rng.randint(0, 90) / 4  # qty: integers, some quarter floats


def generate(seed: int = 15) -> tuple[list[RawProfile], list[RawEvent]]:
    """Profiles and events: random behaviour of 30 users over the 120 days before AS_OF (and a few after), plus
    the hand-made cases."""
    rng = random.Random(seed)
    profiles = [
        RawProfile(
            f"u{i:02d}",
            None if i % 7 == 0 else f"u{i:02d}@example.com",
            None if i % 9 == 0 else rng.choice(["FR", "DE", "US", "fr", "Éire"]),
            None if i % 8 == 0 else rng.randint(16, 80),
            None if i % 6 == 0 else round(rng.uniform(0, 10), 2),
            None if i % 5 == 0 else i % 2 == 0,
        )
        for i in range(30)
    ]
    events: list[RawEvent] = []
    for _ in range(450):
        user = f"u{rng.randrange(30):02d}"
        when = AS_OF - dt.timedelta(seconds=rng.randint(-5 * 86400, 120 * 86400))
        name = rng.choice(["Order", "Order", "View", "Signup"])
        props = {p: v for p in PROPERTY_COLUMNS if (v := _random_value(rng, p)) is not _ABSENT}
        if rng.random() < 0.05:
            props["category"] = ["a", "list"]  # neither null nor a scalar
        events.append(RawEvent(user, name, when, props))
    # window edges: exactly D before as-of is out of `within`, exactly as-of is in, one second after is out
    for back, amount in ((30 * DAY, 1), (dt.timedelta(0), 2), (-SECOND, 4), (90 * DAY, 8), (90 * DAY - SECOND, 16)):
        events.append(RawEvent("edge", "Order", AS_OF - back, {"amount": amount, "category": "tea"}))
    profiles.append(RawProfile("edge", "edge@example.com", "FR", 40, 1.5, True))
    # ties at one instant: first/last take the smallest value; 5 and 5.0 are different values
    tie = AS_OF - 3 * DAY
    ties: tuple[tuple[str, int | float], ...] = (("é", 5.0), ("a", 5), ("B", 7))
    for cat, tied in ties:
        events.append(RawEvent("ties", "Order", tie, {"category": cat, "amount": tied}))
    profiles.append(RawProfile("ties", "ties@example.com", "DE", None, None, None))
    # most_frequent: 'é' and 'a' twice each (the smaller, 'a', wins); 'freq1' has every value once: no value
    for i, cat in enumerate(["é", "a", "é", "B", "a"]):
        events.append(RawEvent("freq", "View", AS_OF - (i + 1) * DAY, {"category": cat}))
    for i, cat in enumerate(["x", "y", "z"]):
        events.append(RawEvent("freq1", "View", AS_OF - (i + 1) * DAY, {"category": cat}))
    profiles += [RawProfile("freq", None, "US", 30, 2.0, False), RawProfile("freq1", None, None, None, None, None)]
    # exact sums: 0.1 + 0.2 is 0.3 (not 0.30000000000000004); floats and integers mixed give a float
    mixed: tuple[int | float, ...] = (0.1, 0.2, 3)
    for number in mixed:
        events.append(RawEvent("floats", "Order", AS_OF - 2 * DAY, {"amount": number, "qty": 1}))
    profiles.append(RawProfile("floats", "floats@example.com", "fr", 20, 0.5, True))
    events.append(RawEvent("ghost", "Order", AS_OF - DAY, {"amount": 3}))  # no profile: never a member
    profiles += [
        RawProfile("quiet", "quiet@example.com", "FR", 50, 9.5, False),  # no events at all
        RawProfile(None, "noid@example.com", "FR", 50, 9.5, True),  # no id: never a member
    ]
    return profiles, events


# -- loading


def _sqlite_ts(ts: dt.datetime, i: int) -> str:
    """The same instants in the text forms SQLite sources use: 'YYYY-MM-DD HH:MM:SS', ISO with Z or an offset."""
    style = i % 4
    if style == 0:
        return ts.strftime("%Y-%m-%d %H:%M:%S")
    if style == 1:
        return ts.strftime("%Y-%m-%dT%H:%M:%SZ")
    if style == 2:
        return ts.isoformat()
    return ts.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat()


def _json(props: dict[str, Any]) -> str:
    return json.dumps(props, ensure_ascii=False)


def _pg_column_value(prop: str, value: Any) -> Any:
    """What a typed PostgreSQL column holds for a JSON value (NULL when the type does not fit)."""
    if prop == "category":
        return value if isinstance(value, str) else None
    if prop == "amount":
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if prop == "flag":
        return value if isinstance(value, bool) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return decimal.Decimal(repr(value)) if isinstance(value, float) else decimal.Decimal(value)
    return None


def load_sqlite(path: str, layout: str, profiles: list[RawProfile], events: list[RawEvent]) -> None:
    """Create ``users`` and ``tracks`` in a SQLite file; ``layout`` is ``json`` or ``columns``."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id TEXT, email TEXT, country TEXT, age INTEGER, score REAL, vip INTEGER)")
        db.executemany(
            "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)",
            [(p.id, p.email, p.country, p.age, p.score, p.vip) for p in profiles],
        )
        if layout == "json":
            db.execute("CREATE TABLE tracks (user_id TEXT, event TEXT, timestamp TEXT, properties TEXT)")
            rows: list[tuple[Any, ...]] = [
                (e.user, e.event, _sqlite_ts(e.ts, i), _json(e.props)) for i, e in enumerate(events)
            ]
            db.executemany("INSERT INTO tracks VALUES (?, ?, ?, ?)", rows)
        else:
            # no declared types: SQLite keeps each value as given (integers, reals, text)
            db.execute("CREATE TABLE tracks (user_id, event, timestamp, category, amount, flag, qty)")

            def cell(v: Any) -> Any:
                return None if isinstance(v, list | dict) else v

            rows = [
                (e.user, e.event, _sqlite_ts(e.ts, i), *(cell(e.props.get(p)) for p in PROPERTY_COLUMNS))
                for i, e in enumerate(events)
            ]
            db.executemany("INSERT INTO tracks VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def load_pg(url: str, layout: str, profiles: list[RawProfile], events: list[RawEvent]) -> None:
    """Create ``users`` and ``tracks`` in the PostgreSQL schema of ``url``; ``layout``: jsonb, json or columns."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text("CREATE TABLE users (id text, email text, country text, age integer, score float8, vip boolean)")
        )
        conn.execute(
            text("INSERT INTO users VALUES (:id, :email, :country, :age, :score, :vip)"),
            [p.__dict__ for p in profiles],
        )
        if layout in ("jsonb", "json"):
            ts_type = "timestamptz" if layout == "jsonb" else "timestamp"  # json: naive UTC timestamps
            conn.execute(
                text(f"CREATE TABLE tracks (user_id text, event text, timestamp {ts_type}, properties {layout})")
            )
            conn.execute(
                text("INSERT INTO tracks VALUES (:u, :e, :t, :p)"),
                [
                    {
                        "u": e.user,
                        "e": e.event,
                        "t": e.ts if layout == "jsonb" else e.ts.replace(tzinfo=None),
                        "p": _json(e.props),
                    }
                    for e in events
                ],
            )
        else:
            conn.execute(
                text(
                    "CREATE TABLE tracks (user_id text, event text, timestamp timestamptz, category text, "
                    "amount float8, flag boolean, qty numeric)"
                )
            )
            conn.execute(
                text("INSERT INTO tracks VALUES (:u, :e, :t, :category, :amount, :flag, :qty)"),
                [
                    {
                        "u": e.user,
                        "e": e.event,
                        "t": e.ts,
                        **{p: _pg_column_value(p, e.props.get(p)) for p in PROPERTY_COLUMNS},
                    }
                    for e in events
                ],
            )
    engine.dispose()


# -- reading back


def _utc(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert isinstance(value, dt.datetime)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def read_back(url: str, layout: str) -> tuple[list[Profile], list[Event]]:
    """Profiles and events exactly as the source holds them, as Python values (typed columns through psycopg,
    JSON through json.loads, integral numerics as integers, as audience-sync reads values)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            users = conn.execute(text("SELECT id, email, country, age, score, vip FROM users")).all()
            if layout == "columns":
                cols = ", ".join(PROPERTY_COLUMNS)
                rows = conn.execute(text(f"SELECT user_id, event, timestamp, {cols} FROM tracks")).all()
            else:
                rows = conn.execute(text("SELECT user_id, event, timestamp, properties FROM tracks")).all()
    finally:
        engine.dispose()
    profiles = [
        Profile(u[0], u[1], {k: _plain(v) for k, v in zip(("country", "age", "score", "vip"), u[2:], strict=True)})
        for u in users
    ]
    events: list[Event] = []
    for r in rows:
        if layout == "columns":
            props = {p: _plain(v) for p, v in zip(PROPERTY_COLUMNS, r[3:], strict=True) if v is not None}
        else:
            raw = r[3]
            props = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
        events.append(Event(r[0], r[1], _utc(r[2]), props))
    return profiles, events


def events_table(layout: str) -> str:
    """The config's [events] table for ``layout``."""
    return '[events]\nproperties = ""\n' if layout == "columns" else ""


def all_layouts() -> Iterator[tuple[str, str]]:
    """(backend, layout) pairs the tests cover."""
    yield from (
        ("sqlite", "json"),
        ("sqlite", "columns"),
        ("postgres", "jsonb"),
        ("postgres", "json"),
        ("postgres", "columns"),
    )
