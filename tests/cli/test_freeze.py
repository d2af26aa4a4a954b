"""The command as a program freezes what its imports created; a caller passing its own arguments keeps its collector."""

from __future__ import annotations

import gc
import sys

import pytest

from audience_sync.cli.main import main


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
