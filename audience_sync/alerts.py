"""Alerts: a Slack-compatible message when something goes wrong, once per incident, and once on recovery.

An incident is one of: a run that failed for a destination (``run_failed``), an audience the mass-exit guard
held back (``guard``), or more than ``[alerts] max_failed_share`` of a destination's changes failing or staying
pending in a run (``failures``). Open incidents live in the ``alert_incidents`` table, so an incident that
lasts many runs, or many cron invocations, is posted once. An incident recovers when a later run covering its
destination (and audience) no longer shows it. If the webhook cannot be reached the alert is kept and posted
after the next run; alerting never changes a run's outcome.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import httpx
from sqlalchemy import Connection, Engine, delete, func, select, update

from .attempts import Attempt
from .config import AlertsConfig
from .errors import LockHeld
from .store.schema import AlertIncident, DiffRow, table_of, utcnow

log = logging.getLogger(__name__)

incidents = table_of(AlertIncident)
diffs = table_of(DiffRow)


@dataclass(frozen=True)
class Incident:
    """Something a person should look at, identified by ``incident`` so that it is alerted once."""

    incident: str
    kind: str
    destination: str
    message: str
    computation_key: str | None = None


@dataclass(frozen=True)
class AlertReport:
    """What one evaluation did: incidents opened and recovered, and messages posted."""

    opened: tuple[str, ...] = ()
    recovered: tuple[str, ...] = ()
    posted: int = 0


def detect(conn: Connection, attempt: Attempt, max_failed_share: float) -> list[Incident]:
    """The incidents an attempt shows (none for a dry run, or when another run held the lock)."""
    if attempt.dry_run or isinstance(attempt.error, LockHeld):
        return []
    if attempt.result is None:
        reason = str(attempt.error) if attempt.error is not None else "the run stopped without a result"
        return [Incident(f"run_failed:{d}", "run_failed", d, f"run failed: {reason}") for d in attempt.destinations]
    result = attempt.result
    found: list[Incident] = []
    held = conn.execute(
        select(diffs.c.destination, diffs.c.computation_key, func.count(), func.max(diffs.c.error))
        .where(diffs.c.run_id == result.run_id, diffs.c.status == "held")
        .group_by(diffs.c.destination, diffs.c.computation_key)
    ).all()
    for dest, key, n, error in held:
        found.append(
            Incident(f"guard:{dest}:{key}", "guard", dest, f"{key} held back for {dest} ({n} changes): {error}", key)
        )
    per_destination = result.counts.get("destinations", {})
    for dest in attempt.destinations:
        error = result.destinations.get(dest, {}).get("error")
        if result.status == "failed" and error:
            found.append(Incident(f"run_failed:{dest}", "run_failed", dest, f"run {result.run_id} failed: {error}"))
            continue  # its changes all stay pending: that is this incident, not another one
        counts = per_destination.get(dest, {})
        undelivered = counts.get("failed", 0) + counts.get("pending", 0)
        deliverable = undelivered + counts.get("sent", 0)
        if deliverable and undelivered / deliverable > max_failed_share:
            found.append(
                Incident(
                    f"failures:{dest}",
                    "failures",
                    dest,
                    f"{undelivered} of {deliverable} changes to {dest} failed or stay pending in run "
                    f"{result.run_id} ({undelivered / deliverable:.0%}); see `audience-sync diff --run "
                    f"{result.run_id} --destination {dest} --status failed`",
                )
            )
    return found


def _recoverable(destination: str, key: str | None, attempt: Attempt) -> bool:
    """Whether this attempt saw enough to say an incident is over: it covered its destination and audience."""
    return destination in attempt.destinations and (key is None or key in attempt.computations)


def _post(url: str, text: str, timeout: float) -> bool:
    try:
        response = httpx.post(url, json={"text": text}, timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("could not post the alert (it will be tried again after the next run): %s", exc)
        return False
    return True


def _lines(items: Iterable[str]) -> str:
    return "\n".join(f"• {item}" for item in items)


def notify(engine: Engine, config: AlertsConfig, attempt: Attempt, *, timeout: float = 10.0) -> AlertReport:
    """Open and close incidents for ``attempt`` and post what is new; a no-op when alerts are not configured.

    Guarantees: each incident is posted once while it lasts and once when it recovers; an alert that could
    not be posted is kept and tried again after the next run; the run's outcome is never changed.
    """
    url = config.webhook_url
    if url is None or attempt.dry_run or isinstance(attempt.error, LockHeld):
        return AlertReport()
    run_id = attempt.result.run_id if attempt.result is not None else None
    with engine.begin() as conn:
        active = {i.incident: i for i in detect(conn, attempt, config.max_failed_share)}
        open_rows = conn.execute(select(incidents)).all()
        known = {r.incident for r in open_rows}
        opened = [i for key, i in active.items() if key not in known]
        if opened:
            now = utcnow()
            conn.execute(
                incidents.insert(),
                [{**asdict(i), "run_id": run_id, "opened_at": now, "notified_at": None} for i in opened],
            )
        recovered = [
            r for r in open_rows if r.incident not in active and _recoverable(r.destination, r.computation_key, attempt)
        ]
        silent = [r.incident for r in recovered if r.notified_at is None]  # never alerted: nothing to recover
        if silent:
            conn.execute(delete(incidents).where(incidents.c.incident.in_(silent)))
        unnotified = conn.execute(
            select(incidents).where(incidents.c.notified_at.is_(None)).order_by(incidents.c.opened_at)
        ).all()
    posted = 0
    host = socket.gethostname()
    secret = url.get_secret_value()
    if unnotified:
        text = f"audience-sync on {host}: {len(unnotified)} problem(s)\n" + _lines(r.message for r in unnotified)
        if _post(secret, text, timeout):
            posted += 1
            with engine.begin() as conn:
                conn.execute(
                    update(incidents)
                    .where(incidents.c.incident.in_([r.incident for r in unnotified]))
                    .values(notified_at=utcnow())
                )
    to_announce = [r for r in recovered if r.notified_at is not None]
    if to_announce:
        what = f"run {run_id}" if run_id is not None else "the latest run"
        text = f"audience-sync on {host}: recovered in {what}\n" + _lines(
            f"{r.kind} {r.destination}{' ' + r.computation_key if r.computation_key else ''}: was: {r.message}"
            for r in to_announce
        )
        if _post(secret, text, timeout):
            posted += 1
            with engine.begin() as conn:
                conn.execute(delete(incidents).where(incidents.c.incident.in_([r.incident for r in to_announce])))
    return AlertReport(
        opened=tuple(i.incident for i in opened),
        recovered=tuple(r.incident for r in recovered),
        posted=posted,
    )


def open_incidents(engine: Engine) -> Sequence[AlertIncident]:
    """The incidents open now, oldest first (for people and tests)."""
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        return list(session.scalars(select(AlertIncident).order_by(AlertIncident.opened_at)))
