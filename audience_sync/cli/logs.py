"""Log output for the command line: human lines, or one JSON object per line for log collectors.

Library modules only call ``logging.getLogger(__name__)`` and pass structured fields (run id, destination,
counts, durations) as ``extra``; this module decides how they are written. Every line is scrubbed of our secrets
(:func:`audience_sync.redact.scrub`) as it is written, whatever its fields or its traceback quote.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

from ..redact import scrub

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

#: the logger of a run's closing record; with JSON logs it is written whatever ``--log-level``, so that a log
#: collector gets every run's summary as a line of its own
SUMMARY_LOGGER = "audience_sync.run.summary"

_format: list[LogFormat] = ["text"]


def log_format() -> LogFormat:
    """The format :func:`configure_logging` was last called with."""
    return _format[0]


class ScrubbingFormatter(logging.Formatter):
    """Another formatter's lines with every known secret scrubbed out."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return scrub(self.inner.format(record))


def configure_logging(level: str = "warning", fmt: LogFormat = "text") -> None:
    """Send the ``audience_sync`` loggers to stderr at ``level``, as text lines or JSON objects.

    JSON lines carry ``time``, ``level``, ``logger``, ``message`` and every structured field the library
    attached (``run_id``, ``destination``, ``counts``, ``duration_seconds``, ...). With JSON, each run's summary
    record (:data:`SUMMARY_LOGGER`) is written at every level.
    """
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
            json_ensure_ascii=False,
        )
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(ScrubbingFormatter(formatter))
    _format[0] = fmt
    for name in ("audience_sync", "apscheduler"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper() if name == "audience_sync" else max(logging.WARNING, _level(level)))
        logger.propagate = False
    # JSON logs: the summary record of each run at the default level too; text logs: as the level says
    logging.getLogger(SUMMARY_LOGGER).setLevel(min(logging.INFO, _level(level)) if fmt == "json" else logging.NOTSET)


def _level(level: str) -> int:
    return logging.getLevelNamesMapping()[level.upper()]
