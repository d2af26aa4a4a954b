"""How long work reports progress: a small protocol the CLI implements with rich, and a silent default."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives progress of a run. Implementations must be cheap: they are called once per chunk."""

    def begin(self, task: str, total: int | None = None) -> None:
        """A new stage starts; ``total`` units are expected when known."""

    def advance(self, task: str, amount: int) -> None:
        """``amount`` more units of ``task`` are done."""

    def end(self, task: str) -> None:
        """``task`` is finished."""


class NoProgress:
    """Reports nothing."""

    def begin(self, task: str, total: int | None = None) -> None:
        pass

    def advance(self, task: str, amount: int) -> None:
        pass

    def end(self, task: str) -> None:
        pass
