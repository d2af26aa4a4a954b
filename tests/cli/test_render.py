"""The run summary and the runs rows show every tally in model.COUNT_KEYS, ``held`` (the guard's) included."""

from __future__ import annotations

import io

from rich.console import Console

from audience_sync.cli import render
from audience_sync.model import COUNT_KEYS


def test_the_summary_and_the_runs_rows_count_held_changes() -> None:
    per_destination = {**dict.fromkeys(COUNT_KEYS, 0), "exited": 120, "held": 120}
    result = {
        "run_id": 7,
        "mode": "incremental",
        "status": "partial",
        "counts": {**per_destination, "destinations": {"gist": per_destination}, "sources": {}},
        "error": None,
    }
    out = io.StringIO()
    render.print_run_summary(Console(file=out, width=200), result)
    header = next(line for line in out.getvalue().splitlines() if "destination" in line)
    # planned shows in dry runs only, identifiers when a run had some
    assert [c for c in COUNT_KEYS if c in header] == [c for c in COUNT_KEYS if c not in ("planned", "identifiers")]
    assert "held" in header and out.getvalue().count("120") == 4
    assert render.runs_rows([{"run_id": 7, "counts": result["counts"]}])[0]["held"] == 120


def test_the_runs_table_shows_every_tally_a_row_adds_up_from() -> None:
    counts = {**dict.fromkeys(COUNT_KEYS, 0), "exited": 5, "held": 3, "planned": 2}
    row = render.runs_rows([{"run_id": 1, "counts": counts}])[0]
    assert all(k in render.RUN_COLUMNS for k in COUNT_KEYS)
    assert (row["held"], row["planned"], row["identifiers"]) == (3, 2, 0)
