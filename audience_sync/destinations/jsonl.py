"""The JSONL sink: appends the calls it would send, one JSON object per line (demo, dry runs, audits)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ..config import JsonlDestination
from ..errors import TransientDestinationError
from ..model import Outcome
from .base import MessageDestination
from .batching import Encoded
from .messages import MessageOptions

log = logging.getLogger(__name__)

#: how much of the file's end is read at a time when looking for its last newline
_TAIL_BLOCK = 64 * 1024


def cut_partial_line(fd: int) -> tuple[int, int]:
    """Cut a partial last line off the file open at ``fd`` (back to just after its last newline; an empty file if
    it has none), fsynced. Returns the file's size after the cut and how many bytes were cut (0: it ended whole)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size, 0
    keep, end = 0, size
    while end > 0:
        start = max(0, end - _TAIL_BLOCK)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        end = start
    os.ftruncate(fd, keep)
    os.fsync(fd)
    return keep, size - keep


#: a JSON string (kept whole), or whitespace between tokens (dropped)
_TOKEN_OR_SPACE = re.compile(rb'("(?:[^"\\]|\\.)*")|[ \t\r\n]+')


def compact(message: bytes) -> bytes:
    """``message`` (one JSON value) with no whitespace between its tokens, as ``json.dumps(..., separators=(",",
    ":"))`` writes it; strings and numbers are kept byte for byte. SQLite's JSON is compact already; PostgreSQL's
    ``json_build_object`` writes ``" : "`` and ``", "`` between items.

    Without a backslash, every ``"`` of a JSON text opens or closes a string (a quote inside one is escaped), so
    the pieces between quotes alternate outside and inside strings and only the outside ones lose their
    whitespace: no Python per token, about 8 times faster than the regular expression, kept for messages with
    escapes."""
    if b'" : ' not in message and b", " not in message:
        return message
    if b"\\" in message:
        return _TOKEN_OR_SPACE.sub(lambda m: m.group(1) or b"", message)
    pieces = message.split(b'"')
    pieces[::2] = [piece.translate(None, b" \t\r\n") for piece in pieces[::2]]
    return b'"'.join(pieces)


def lines(messages: Sequence[bytes]) -> bytes:
    """``messages`` compacted, each followed by a newline: the bytes a chunk appends to the file.

    A search of the joined chunk first: when neither of the separators :func:`compact` rewrites occurs in it,
    no message holds one, every message is its own compact form (SQLite's JSON always), and the chunk is
    written as joined, with no Python per message (a separator cannot span two messages: the newline between
    them is in neither). A separator found (PostgreSQL's JSON) compacts message by message."""
    if not messages:
        return b""
    joined = b"\n".join([*messages, b""])  # each followed by its newline, without copying the chunk once more
    # both separators hold a space: looking for one byte first is a memchr (JSON's many quotes and commas make
    # the searches for the separators themselves about 30 times slower); strings with spaces go on to them
    if b" " not in joined or (b'" : ' not in joined and b", " not in joined):
        return joined
    return b"".join(compact(message) + b"\n" for message in messages)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class JsonlSink(MessageDestination):
    """Appends Engage-shaped identify (and, if configured, track) calls to a file, one per line.

    The state database builds the calls as JSON bytes (:mod:`audience_sync.store.messages`), so a chunk costs
    no Python per change. Guarantees:

    - a chunk is acknowledged only after its lines are written and fsynced, so a crash can at most repeat the
      lines of the chunk in flight, never lose one;
    - every line of the file parses: before each chunk is appended, a partial last line (a write cut short by a
      full disk, or a crash mid-write) is cut off back to the last newline. Its changes were never recorded as
      sent (their chunk was not acknowledged), so they are pending or in doubt, and are written again;
    - a write or fsync that fails takes the chunk's bytes back off the file and leaves the whole chunk pending
      with the reason (TransientDestinationError: the sink stops for this run, which ends partial, exit 3).

    The file is written unbuffered (``os.write`` on a descriptor opened for appending), so nothing of a failed
    chunk can be left in a buffer to be written later.
    """

    def __init__(self, config: JsonlDestination, *, before_attempt: Callable[[], None] | None = None) -> None:
        super().__init__(config.name, before_attempt=before_attempt)
        self.path: Path = config.output_path
        self.send = config.send
        self.options = MessageOptions.of(config)
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        return self._fd

    def deliver_messages(self, messages: Sequence[Encoded]) -> dict[int, Outcome]:
        """Append the messages as lines, then fsync; TransientDestinationError (nothing acknowledged, nothing of the
        chunk left in the file) if the file cannot be opened, repaired or written."""
        try:
            fd = self._open()
        except OSError as exc:
            raise self._failed(f"cannot open {str(self.path)!r}: {exc.strerror}") from None
        self.check_fence()
        try:
            start, cut = cut_partial_line(fd)
        except OSError as exc:
            raise self._failed(f"cannot repair the end of {str(self.path)!r}: {exc.strerror}") from None
        if cut:
            log.warning(
                "destination %r: cut a partial last line of %d bytes off %s (a write cut short by a full disk or a "
                "crash); its changes were never recorded as sent and are written again",
                self.name,
                cut,
                self.path,
                extra={"destination": self.name, "path": str(self.path), "bytes_cut": cut},
            )
        try:
            _write_all(fd, lines([message for _, message in messages]))
            os.fsync(fd)
        except OSError as exc:
            taken_back = self._take_back(fd, start)
            raise self._failed(
                f"writing {str(self.path)!r} failed: {exc.strerror}; "
                + (
                    "the chunk's lines were taken back off the file"
                    if taken_back
                    else "taking the chunk's lines back failed too (the next write cuts a partial line; whole ones "
                    "may be repeated)"
                )
                + " and its changes stay pending for the next run"
            ) from None
        return {}

    @staticmethod
    def _take_back(fd: int, size: int) -> bool:
        """Truncate the file back to ``size`` (where the failed chunk began); False when even that failed, and the
        next write's repair cuts what is left of it."""
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError:
            return False
        return True

    def _failed(self, reason: str) -> TransientDestinationError:
        """The sink cannot take the chunk now (no ``partial``: nothing of the chunk was acknowledged)."""
        return TransientDestinationError(f"destination {self.name!r}: {reason}", destination=self.name)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
