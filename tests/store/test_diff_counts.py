"""``write_changes`` returns exactly how many changes of each kind it wrote: every kind of both classes at once
(in-doubt rows and changed emails included), a first sync and a resync, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, func, select

from audience_sync.config.computations import Computation
from audience_sync.store.diff import write_changes
from audience_sync.store.engine import create_state_engine
from audience_sync.store.migrate import upgrade
from audience_sync.store.schema import diffs, snapshot, staging, utcnow

COMPS = [
    Computation("vip", "VIP", "audience", "SELECT 1", None, ("d", "fresh")),
    Computation("score", "Score", "trait", "SELECT 1", None, ("d", "fresh")),
]
# (key, user, value, email, in doubt) the destination "d" holds
HELD = [
    ("vip", "u1", "true", "a@x.io", False),
    ("vip", "u2", "true", "b@x.io", False),
    ("vip", "u3", "true", "c@x.io", True),
    ("vip", "u4", "false", "d@x.io", False),
    ("vip", "u5", "true", "e@x.io", False),
    ("score", "u1", "5", "a@x.io", False),
    ("score", "u2", "7", "b@x.io", False),
    ("score", "u3", "1", "c@x.io", True),
    ("score", "u6", "2", "f@x.io", False),
    ("score", "u8", "9", "h@x.io", False),
]
# (key, user, value, email) run 2 staged
STAGED = [
    ("vip", "u1", "true", "a@x.io"),  # unchanged
    ("vip", "u2", "true", "b2@x.io"),  # identifiers
    ("vip", "u3", "true", "c@x.io"),  # in doubt: entered again
    ("vip", "u4", "true", "d@x.io"),  # held false: entered
    ("vip", "u7", "true", "g@x.io"),  # new: entered; u5 left: exited
    ("score", "u1", "5", "a@x.io"),  # unchanged
    ("score", "u2", "7", "b2@x.io"),  # identifiers
    ("score", "u3", "1", "c@x.io"),  # in doubt: changed
    ("score", "u6", "3", "f@x.io"),  # changed
    ("score", "u7", "4", "g@x.io"),  # entered; u8 left: exited
]


@pytest.fixture
def engine(state_url: str) -> Iterator[Engine]:
    engine = create_state_engine(state_url)
    upgrade(engine)
    with engine.begin() as conn:
        now = utcnow()
        conn.execute(
            snapshot.insert(),
            [
                {"destination": "d", "computation_key": k, "user_id": u, "value": v, "email": e, "run_id": 1}
                | {"in_doubt": doubt, "updated_at": now}
                for k, u, v, e, doubt in HELD
            ],
        )
        conn.execute(
            staging.insert(),
            [{"run_id": 2, "computation_key": k, "user_id": u, "value": v, "email": e} for k, u, v, e in STAGED],
        )
    yield engine
    engine.dispose()


def written(conn: Connection, dest: str) -> Counter[str]:
    rows = conn.execute(
        select(diffs.c.change, func.count())
        .where(diffs.c.run_id == 2, diffs.c.destination == dest)
        .group_by(diffs.c.change)
    )
    return Counter({str(change): int(n) for change, n in rows})


def test_every_kind_of_both_classes_is_counted_exactly(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin() as tx:
        counts = write_changes(conn, 2, "d", COMPS)
        assert counts == written(conn, "d") == Counter(entered=4, identifiers=2, changed=2, exited=2)
        kinds = conn.execute(select(diffs.c.computation_key, diffs.c.user_id, diffs.c.change, diffs.c.email)).all()
        assert sorted(tuple(r) for r in kinds) == [
            ("score", "u2", "identifiers", "b2@x.io"),
            ("score", "u3", "changed", "c@x.io"),
            ("score", "u6", "changed", "f@x.io"),
            ("score", "u7", "entered", "g@x.io"),
            ("score", "u8", "exited", "h@x.io"),
            ("vip", "u2", "identifiers", "b2@x.io"),
            ("vip", "u3", "entered", "c@x.io"),
            ("vip", "u4", "entered", "d@x.io"),
            ("vip", "u5", "exited", "e@x.io"),
            ("vip", "u7", "entered", "g@x.io"),
        ]
        tx.rollback()


def test_a_first_sync_and_a_resync_are_counted_exactly(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin() as tx:
        assert write_changes(conn, 2, "fresh", COMPS) == written(conn, "fresh") == Counter(entered=10)
        tx.rollback()
    with engine.connect() as conn, conn.begin() as tx:
        counts = write_changes(conn, 2, "d", COMPS, resync=True)
        assert counts == written(conn, "d") == Counter(entered=5 + 1, changed=4, exited=2)
        tx.rollback()
