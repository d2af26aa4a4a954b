"""A state database with something of everything the report shows, hostile text included, and what its charts
must carry, computed from the database with SQL of the tests' own (not through the report's code)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, text

from audience_sync.config import Config
from tests.fakes.gist import FakeGist, Fault
from tests.harness import Harness

KEY_ENV = {"GIST_API_KEY": "gist-test-key"}
#: a user id, an audience name and a destination's reason that must be shown as text, never run
HOSTILE_USER = '<script>alert("id")</script>'
HOSTILE_NAME = "VIP <b>bold</b> \"q\" 'a' [/] $x$ [bold red]"
HOSTILE_REASON = "refused <img src=x onerror=alert(1)> \"quoted\" 'single' [/] & more"
RUNS = 4


def hostile_project(harness: Harness, gist: FakeGist) -> Config:
    """Four runs to a JSONL file and a fake Gist: churn, a user Gist refuses for good (with a hostile reason), a
    user Gist answers 503 (pending), a user without an email (skipped), and a last run in which the guard holds
    the audience back (its source came back empty)."""
    gist.user_faults[HOSTILE_USER] = Fault(422, {"errors": [{"code": "invalid", "message": HOSTILE_REASON}]})
    gist.user_faults["u05"] = Fault(503)
    body = (
        harness.jsonl_destination()
        + f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "GIST_API_KEY"\nendpoint = "{gist.url}"\n'
        + "max_retries = 0\n"
        + f'[[audiences]]\nname = {json.dumps(HOSTILE_NAME)}\nkey = "vip"\n'
        + f'sql = "{harness.warehouse.audience_sql("V")}"\n'
        + harness.trait("Score")
    )
    config = harness.config(body, environ=KEY_ENV)
    for run in range(RUNS):
        members: dict[str, str | None] = {f"u{i:02}": f"u{i}@x.io" for i in range(run, 12 + 2 * run)}
        members[HOSTILE_USER] = "h@x.io"
        members["u99"] = None  # no email: skipped at Gist
        harness.warehouse.set_members("V", members if run < RUNS - 1 else {})
        scores = {f"u{i:02}": (f"u{i}@x.io", (i * (run + 1)) % 5 or None) for i in range(15)}
        scores["u05"] = ("u5@x.io", run + 10)  # changes every run: a 503 at Gist each time
        harness.warehouse.set_trait("Score", scores)
        harness.run(config)
    return config


def expected_marks(engine: Engine, keys: Sequence[str] = ("vip", "score")) -> dict[str, int]:
    """Per chart id of the page (``runs``, then ``key0``, ``key1``… for ``keys`` in the order they are charted,
    the config's), how many data marks it must draw: a bar per non-zero count, a point per recorded size."""
    with engine.connect() as conn:
        counts = [
            json.loads(c) if isinstance(c, str) else c
            for c in conn.execute(text("SELECT counts FROM sync_runs WHERE mode <> 'dry_run' ORDER BY id")).scalars()
        ]
        per_key: dict[str, Any] = {}
        for key, cls, size_points, entered, exited, changed in conn.execute(
            text(
                "SELECT computation_key, max(computation_class), count(*), "
                "sum(CASE WHEN entered > 0 THEN 1 ELSE 0 END), sum(CASE WHEN exited > 0 THEN 1 ELSE 0 END), "
                "sum(CASE WHEN changed > 0 THEN 1 ELSE 0 END) FROM size_history GROUP BY computation_key"
            )
        ):
            per_key[key] = size_points + entered + exited + (changed if cls == "trait" else 0)
    series = ("sent", "skipped", "failed", "held", "pending")
    marks = {"runs": sum(1 for c in counts for s in series if c.get(s))}
    for i, key in enumerate(keys):
        marks[f"key{i}"] = per_key[key]
    return marks
