"""``decide_status``, the pure function a run's status comes from, and the exit codes the statuses give."""

from __future__ import annotations

from typing import Any

import pytest

from audience_sync.config import Computation
from audience_sync.model import RunStatus
from audience_sync.run.deliver import DeliveryReport
from audience_sync.run.guard import Hold
from audience_sync.run.outcome import RunResult, decide_status

COMP = Computation("vip", "VIP", "audience", "SELECT 1", None, ("d",))
HOLD = Hold("d", COMP, exits=9, size=10, staged=1)
CLEAN = {"d": DeliveryReport("d", attempted=3)}


def counts(**kw: int) -> dict[str, Any]:
    return {"pending": 0, "failed": 0, "sent": 3, **kw}


@pytest.mark.parametrize(
    ("holds", "reports", "tally", "status"),
    [
        ([], CLEAN, counts(), RunStatus.SUCCEEDED),
        ([], {}, counts(sent=0), RunStatus.SUCCEEDED),  # nothing to do
        ([], CLEAN, counts(pending=1), RunStatus.PARTIAL),
        ([], CLEAN, counts(failed=1), RunStatus.PARTIAL),
        ([], {"d": DeliveryReport("d", 3, error="HTTP 503 after 5 retries")}, counts(), RunStatus.PARTIAL),
        ([HOLD], CLEAN, counts(), RunStatus.FAILED),  # the guard held a computation
        ([HOLD], CLEAN, counts(pending=2), RunStatus.FAILED),
        ([], {"d": DeliveryReport("d", 1, error="HTTP 401", credentials_rejected=True)}, counts(pending=2), "failed"),
    ],
)
def test_the_status_of_a_finished_run(
    holds: list[Hold], reports: dict[str, DeliveryReport], tally: dict[str, Any], status: str
) -> None:
    assert decide_status(holds, reports, tally, dry_run=False) == status


@pytest.mark.parametrize("holds", [[], [HOLD]])
def test_a_dry_run_always_succeeds(holds: list[Hold]) -> None:
    """It sends nothing: its holds and its planned changes are in the counts and the error text, not the status."""
    rejected = {"d": DeliveryReport("d", 0, error="x", credentials_rejected=True)}
    assert decide_status(holds, rejected, counts(pending=5, failed=1), dry_run=True) is RunStatus.SUCCEEDED


@pytest.mark.parametrize(("status", "code"), [("succeeded", 0), ("partial", 3), ("failed", 1), ("running", 1)])
def test_each_status_has_its_exit_code(status: str, code: int) -> None:
    result = RunResult(run_id=1, mode="incremental", status=RunStatus(status), counts={})  # type: ignore[typeddict-item]
    assert result.exit_code == code
    assert result.to_dict()["status"] == status and result.to_dict()["exit_code"] == code
