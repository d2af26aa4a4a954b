"""The run's progress protocol drawn as rich progress bars on a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgressBar


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
