"""``size_history``: per run, destination and computation, the size the destination held after the run.

Runs record it as they close (``store/sizes.py``). For a database that already holds runs, the history is
rebuilt here from what is stored, as far back as it is exact: the size after each run is the snapshot's
current count minus what the acknowledged (``sent``) changes of every later run added. That is exact only while
no later run's changes are missing, so the walk back stops at the first run whose changes were pruned (its
recorded counts and its stored changes disagree) or that was deleted (a gap in the run ids); older runs get
no rows. Dry runs and runs still running get none either.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 09:00:00
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TALLIES = ("entered", "exited", "changed", "sent", "failed", "skipped", "pending", "held")

_runs = sa.table(
    "sync_runs",
    sa.column("id", sa.BigInteger()),
    sa.column("mode", sa.String()),
    sa.column("status", sa.String()),
    sa.column("started_at", sa.DateTime(timezone=True)),
    sa.column("finished_at", sa.DateTime(timezone=True)),
    sa.column("destinations", sa.JSON()),
    sa.column("computations", sa.JSON()),
    sa.column("counts", sa.JSON()),
)


def upgrade() -> None:
    op.create_table(
        "size_history",
        sa.Column("destination", sa.Text(), nullable=False),
        sa.Column("computation_key", sa.Text(), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("computation_class", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        *(sa.Column(name, sa.Integer(), nullable=False) for name in _TALLIES),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("destination", "computation_key", "run_id"),
    )
    op.create_index("ix_size_history_run", "size_history", ["run_id"], unique=False)
    _backfill(op.get_bind())


def downgrade() -> None:
    op.drop_index("ix_size_history_run", table_name="size_history")
    op.drop_table("size_history")


_HOLDS = """CASE WHEN computation_class = 'audience' THEN (CASE WHEN {v} = 'true' THEN 1 ELSE 0 END)
                 ELSE (CASE WHEN {v} IS NOT NULL THEN 1 ELSE 0 END) END"""


def _backfill(conn: sa.Connection) -> None:
    """Rebuild the sizes of past runs, newest first, as far back as they are exact (see the module docstring)."""
    now = {
        (d, k): int(n)
        for d, k, n in conn.execute(
            sa.text(
                "SELECT s.destination, s.computation_key, count(*) FROM snapshot s "
                "JOIN computations c ON c.key = s.computation_key "
                "WHERE (c.computation_class = 'audience' AND s.value = 'true') "
                "OR (c.computation_class = 'trait' AND s.value IS NOT NULL) "
                "GROUP BY s.destination, s.computation_key"
            )
        )
    }
    classes = dict(conn.execute(sa.text("SELECT key, computation_class FROM computations")).all())
    moved = f"({_HOLDS.format(v='new_value')}) - ({_HOLDS.format(v='old_value')})"
    tallies: dict[int, dict[tuple[str, str], dict[str, int]]] = defaultdict(dict)
    rows_of_run: dict[int, int] = defaultdict(int)
    skipped_of_run: dict[int, int] = defaultdict(int)
    for run_id, dest, key, change, status, n, delta in conn.execute(
        sa.text(
            f"SELECT run_id, destination, computation_key, change, status, count(*), sum({moved}) FROM diffs "
            "GROUP BY run_id, destination, computation_key, change, status"
        )
    ):
        tally = tallies[run_id].setdefault((dest, key), {**dict.fromkeys(_TALLIES, 0), "delta": 0})
        if status != "skipped":  # a skipped change counts as skipped only (as the runs count since issue 13)
            tally[change] = tally.get(change, 0) + int(n)
        else:
            skipped_of_run[run_id] += int(n)
        if status in tally:
            tally[status] += int(n)
        if status == "sent":
            tally["delta"] += int(delta or 0)
        rows_of_run[run_id] += int(n)

    known = set(now) | {pair for of_run in tallies.values() for pair in of_run}
    size = dict(now)  # size after the run being looked at, walking back from the present
    out: list[dict[str, Any]] = []
    expected_id: int | None = None
    for run in conn.execute(sa.select(_runs).order_by(_runs.c.id.desc())).mappings():
        if expected_id is not None and run["id"] != expected_id:
            break  # a deleted run: its acknowledged changes are unknown
        expected_id = run["id"] - 1
        counts = run["counts"] or {}
        kinds = sum(counts.get(k, 0) for k in ("entered", "exited", "changed"))
        rows = rows_of_run.get(run["id"], 0)
        # a run's counts include its skipped changes by kind, or (since issue 13) leave them out
        if "entered" in counts and kinds not in (rows, rows - skipped_of_run.get(run["id"], 0)):
            break  # some of its changes were pruned
        of_run = tallies.get(run["id"], {})
        if run["mode"] != "dry_run" and run["status"] != "running":
            recorded = run["finished_at"] or run["started_at"]
            for dest in run["destinations"] or []:
                for key in run["computations"] or []:
                    if key not in classes or (dest, key) not in known:
                        continue  # never synced there (a computation may go to some destinations only)
                    tally = of_run.get((dest, key), dict.fromkeys(_TALLIES, 0))
                    out.append(
                        {
                            "destination": dest,
                            "computation_key": key,
                            "run_id": run["id"],
                            "computation_class": classes[key],
                            "size": size.get((dest, key), 0),
                            **{k: tally[k] for k in _TALLIES},
                            "recorded_at": recorded,
                        }
                    )
        for pair, tally in of_run.items():
            size[pair] = size.get(pair, 0) - tally["delta"]
    if out:
        table = sa.table(
            "size_history",
            *(sa.column(c) for c in ("destination", "computation_key", "run_id", "computation_class", "size")),
            *(sa.column(c) for c in _TALLIES),
            sa.column("recorded_at", sa.DateTime(timezone=True)),
        )
        for start in range(0, len(out), 5_000):
            conn.execute(table.insert(), out[start : start + 5_000])
