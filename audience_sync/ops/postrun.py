"""What happens after every run, whoever started it (``run``, ``resync``, the scheduler): retention, alerts,
metrics. Each step is best-effort: its failure is logged and never changes the run's outcome or exit code.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from ..config import Config
from ..errors import LockHeld
from ..store.engine import create_state_engine
from ..store.migrate import upgrade
from ..store.retention import prune
from .attempts import Attempt

log = logging.getLogger(__name__)


def after_run(config: Config, attempt: Attempt, *, metrics_file: str | Path | None = None) -> None:
    """Prune history (``[retention] keep``), post alerts (``[alerts]``) and write ``metrics_file`` for ``attempt``."""
    wanted = config.retention.keep_seconds or config.alerts.webhook_url is not None or metrics_file is not None
    if not wanted:
        return
    engine = create_state_engine(config.state_url)
    try:
        try:
            upgrade(engine)  # the run may have failed before it got this far
        except Exception as exc:
            log.error("cannot open the state database for metrics and alerts: %s", exc)
            return
        keep = config.retention.keep_seconds
        if keep and attempt.result is not None and not attempt.dry_run:
            try:
                pruned = prune(engine, dt.timedelta(seconds=keep))
                if pruned.diffs or pruned.runs:
                    log.info(
                        "pruned %d diff rows and %d runs older than %s",
                        pruned.diffs,
                        pruned.runs,
                        config.retention.keep,
                        extra={"pruned_diffs": pruned.diffs, "pruned_runs": pruned.runs},
                    )
            except Exception:
                log.exception("automatic pruning failed (the run itself is unaffected)")
        from . import alerts, metrics  # imported when wanted: a plain run needs neither HTTP nor Prometheus

        try:
            alerts.notify(engine, config.alerts, attempt)
        except Exception:
            log.exception("alerting failed (the run itself is unaffected)")
        if metrics_file is not None:
            try:
                # a run skipped because another holds the lock says nothing about this host's health
                mine = None if isinstance(attempt.error, LockHeld) else attempt
                metrics.write_metrics(metrics_file, engine, config, mine)
            except Exception:
                log.exception("could not write the metrics file %s (the run itself is unaffected)", metrics_file)
    finally:
        engine.dispose()
