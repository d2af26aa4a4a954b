"""SQLite plans without statistics (SQLite keeps none unless ANALYZE runs): no statement of a run may walk a
destination's whole history of changes, which grows with every run. Checked with EXPLAIN QUERY PLAN on every
statement of a run that follows a few others, exits included (so that the mass-exit guard counts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from tests.harness import Harness, Warehouse


def _plans_of_one_run(harness: Harness, config: Any) -> dict[str, list[str]]:
    plans: dict[str, list[str]] = {}

    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        flat = " ".join(statement.split())
        if executemany or "diffs" not in flat or flat.startswith(("CREATE", "DROP", "PRAGMA")):
            return
        rows = cursor.connection.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
        plans[flat] = [str(row[-1]) for row in rows]

    event.listen(Engine, "before_cursor_execute", explain)
    try:
        result = harness.run(config)
    finally:
        event.remove(Engine, "before_cursor_execute", explain)
    assert result.status == "succeeded", result.error
    return plans


def test_no_run_statement_walks_the_history_of_changes(tmp_path: Path, warehouse: Warehouse) -> None:
    harness = Harness(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", warehouse)
    config = harness.config(
        "[guard]\nmax_exit_share = 1.0\n"
        + harness.jsonl_destination()
        + harness.audience("VIP")
        + harness.trait("Score")
    )
    for round_ in range(3):
        members = {f"u{i}": f"u{i}@x.io" for i in range(round_, 30 + round_)}
        warehouse.set_members("VIP", members)
        warehouse.set_trait("Score", {u: (e, round_) for u, e in members.items()})
        assert harness.run(config).status == "succeeded"
    warehouse.set_members("VIP", {f"u{i}": f"u{i}@x.io" for i in range(10)})  # exits: the guard counts them

    plans = _plans_of_one_run(harness, config)

    walks = {
        statement: plan
        for statement, plan in plans.items()
        if any(line.startswith("SCAN diffs") or "ix_diffs_user" in line for line in plan)
    }
    assert walks == {}
    superseding = [p for s, p in plans.items() if s.startswith("UPDATE diffs SET status=?, error=?")]
    assert superseding and all("ix_diffs_pending" in " ".join(p) for p in superseding)
