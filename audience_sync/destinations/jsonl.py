"""The JSONL sink: appends the calls it would send, one JSON object per line (demo, dry runs, audits)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from ..changes import Outcome
from ..config import JsonlDestination
from ..errors import PermanentDestinationError
from .base import MessageDestination
from .batching import Encoded
from .messages import MessageOptions


class JsonlSink(MessageDestination):
    """Appends Engage-shaped identify (and, if configured, track) calls to a file, one per line.

    The state database builds the calls as JSON bytes (:mod:`audience_sync.store.messages`), so a chunk costs
    no Python per change. Guarantees: a chunk is acknowledged only after its lines are flushed and fsynced, so
    a crash can at most repeat the lines of the chunk in flight, never lose one.
    """

    def __init__(self, config: JsonlDestination) -> None:
        super().__init__(config.name)
        self.path: Path = config.output_path
        self.send = config.send
        self.options = MessageOptions.of(config)
        self._file: IO[bytes] | None = None

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
        return self._file

    def deliver_messages(self, messages: Sequence[Encoded]) -> dict[int, Outcome]:
        """Append the messages as lines, then flush and fsync; PermanentDestinationError (nothing acknowledged)
        if the file cannot be opened or written."""
        try:
            out = self._open()
        except OSError as exc:
            raise self._refused(f"cannot open {str(self.path)!r}: {exc.strerror}") from None
        self.check_fence()
        try:
            out.write(b"".join(message + b"\n" for _, message in messages))
            out.flush()
            os.fsync(out.fileno())
        except OSError as exc:
            raise self._refused(f"writing {str(self.path)!r} failed: {exc.strerror}") from None
        return {}

    def _refused(self, reason: str) -> PermanentDestinationError:
        """The sink cannot take anything (no ``partial``: nothing of the chunk was acknowledged)."""
        return PermanentDestinationError(f"destination {self.name!r}: {reason}", destination=self.name)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
