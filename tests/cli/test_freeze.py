"""The command as a program freezes what its imports created; a caller passing its own arguments keeps its collector."""

from __future__ import annotations

import gc
import sys

import pytest

from audience_sync.cli.main import main
from audience_sync.destinations.registry import REGISTRY


@pytest.fixture
def freezes(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    calls: list[None] = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append(None))
    return calls


def test_the_program_freezes_its_imports(freezes: list[None], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["audience-sync", "--help"])
    main()  # help is printed and main returns: the exit status is 0
    assert len(freezes) == 1


def test_a_caller_with_arguments_keeps_its_collector(freezes: list[None]) -> None:
    main(["--help"])
    assert freezes == []


@pytest.mark.parametrize("frozen_before", [1, 0], ids=["the program froze its imports", "it did not"])
def test_an_adapter_imported_later_is_frozen_only_where_the_imports_were(
    freezes: list[None], monkeypatch: pytest.MonkeyPatch, frozen_before: int
) -> None:
    """The adapter's modules (the HTTP client) are imported when the run builds it, after the freeze in ``main``:
    they are frozen then too, in a process that froze its imports, and never in one that did not (a library
    caller's, a test's)."""
    monkeypatch.setattr(gc, "get_freeze_count", lambda: frozen_before)
    assert REGISTRY["segment"].factory().__name__ == "SegmentBatch"
    assert len(freezes) == frozen_before
