"""The JSONL sink: appends the calls it would send, one JSON object per line (demo, dry runs, audits)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from ..changes import SENT, Change, Outcome
from ..config import JsonlDestination
from ..errors import PermanentDestinationError
from .base import Destination
from .messages import MessageOptions, messages_for, timestamp
from .rendering import LineFormat


class JsonlSink(Destination):
    """Appends Engage-shaped identify (and, if configured, track) calls to a file.

    Guarantees: a chunk is acknowledged only after its lines are flushed and fsynced, so a crash can at most
    repeat the lines of the chunk in flight, never lose one.
    """

    def __init__(self, config: JsonlDestination) -> None:
        super().__init__(config.name)
        self.path: Path = config.output_path
        self.send = config.send
        self.options = MessageOptions.of(config)
        self._file: IO[str] | None = None

    def _open(self) -> IO[str]:
        if self._file is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            except OSError as exc:
                raise PermanentDestinationError(
                    f"destination {self.name!r}: cannot open {str(self.path)!r}: {exc.strerror}",
                    destination=self.name,
                ) from None
        return self._file

    def deliver(self, changes: Sequence[Change]) -> dict[int, Outcome]:
        ts = timestamp()
        lines = [
            json.dumps(m, ensure_ascii=False)
            for ch in changes
            for m in messages_for(ch, self.send, self.options, ts=ts)
        ]
        self.write_lines(lines)
        return dict.fromkeys((ch.diff_id for ch in changes), SENT)

    def line_format(self) -> LineFormat:
        """The sink only writes JSON text: the database renders it (same calls as :meth:`deliver` writes)."""
        return LineFormat(self.send, self.options)

    def write_lines(self, lines: Sequence[str]) -> None:
        """Append ``lines``, then flush and fsync; PermanentDestinationError if the file cannot be written."""
        out = self._open()
        try:
            out.write("".join(line + "\n" for line in lines))
            out.flush()
            os.fsync(out.fileno())
        except OSError as exc:
            raise PermanentDestinationError(
                f"destination {self.name!r}: writing {str(self.path)!r} failed: {exc.strerror}",
                destination=self.name,
            ) from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
