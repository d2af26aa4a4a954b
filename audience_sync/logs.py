"""Log output for the command line: human lines, or one JSON object per line for log collectors.

Library modules only call ``logging.getLogger(__name__)`` and pass structured fields (run id, destination,
counts, durations) as ``extra``; this module decides how they are written.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")


def configure_logging(level: str = "warning", fmt: LogFormat = "text") -> None:
    """Send the ``audience_sync`` loggers to stderr at ``level``, as text lines or JSON objects.

    JSON lines carry ``time``, ``level``, ``logger``, ``message`` and every structured field the library
    attached (``run_id``, ``destination``, ``counts``, ``duration_seconds``, ...).
    """
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "{levelname}{name}{message}",
                style="{",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp="time",
                json_ensure_ascii=False,
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("audience_sync", "apscheduler"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper() if name == "audience_sync" else max(logging.WARNING, _level(level)))
        logger.propagate = False


def _level(level: str) -> int:
    return logging.getLevelNamesMapping()[level.upper()]
