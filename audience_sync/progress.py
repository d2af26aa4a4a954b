"""How long work reports progress: a small protocol the CLI implements with rich, and a silent default."""

from __future__ import annotations

from typing import Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgressBar


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


class RichProgress:
    """Progress bars on a terminal, one per stage, through rich."""

    def __init__(self, console: Console) -> None:
        self._progress = RichProgressBar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def begin(self, task: str, total: int | None = None) -> None:
        # the description is rendered as markup: a name is shown literally
        self._tasks[task] = self._progress.add_task(escape(task), total=total)

    def advance(self, task: str, amount: int) -> None:
        if task in self._tasks:
            self._progress.advance(self._tasks[task], amount)

    def end(self, task: str) -> None:
        task_id = self._tasks.pop(task, None)
        if task_id is not None:
            self._progress.remove_task(task_id)
