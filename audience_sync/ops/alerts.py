"""Alerts: a Slack-compatible message when something goes wrong, once per incident, and once on recovery.

An incident is one of: a run that failed for a destination (``run_failed``), an audience the mass-exit guard
held back (``guard``), or more than ``[alerts] max_failed_share`` of a destination's changes failing or staying
pending in a run (``failures``). Open incidents live in the ``alert_incidents`` table, so an incident that
lasts many runs, or many cron invocations, is posted once. Each incident records the computations of the run
that showed it, and recovers only when a later run covering that destination and all those computations no
longer shows it (so per-audience schedules do not end each other's incidents). Posts are claimed in the
database before they go out, so two processes finishing runs at once do not post the same alert twice. If the
webhook cannot be reached the alert is kept and posted after the next run; alerting never changes a run's
outcome. The webhook URL is a secret: it never appears in logs.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import Connection, Engine, Row

from ..config import AlertsConfig
from ..destinations.deadline import deadline_client, within
from ..errors import LockHeld, RunStopped
from ..run.deliver import STOPPED
from ..store import incidents as store_incidents
from ..store.schema import utcnow
from .attempts import Attempt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Incident:
    """Something a person should look at, identified by ``incident`` so that it is alerted once."""

    incident: str
    kind: str
    destination: str
    message: str
    computations: tuple[str, ...]


@dataclass(frozen=True)
class AlertReport:
    """What one evaluation did: incidents opened and recovered, and messages posted."""

    opened: tuple[str, ...] = ()
    recovered: tuple[str, ...] = ()
    posted: int = 0


def _is_incident(attempt: Attempt) -> bool:
    """Dry runs, runs refused by another run's lock and runs stopped by a signal are no incident (nor recovery)."""
    return not (attempt.dry_run or isinstance(attempt.error, LockHeld | RunStopped))


def _incident(kind: str, destination: str, message: str, computations: Sequence[str]) -> Incident:
    scope = ",".join(sorted(computations))
    digest = hashlib.sha256(scope.encode()).hexdigest()[:12]
    return Incident(f"{kind}:{destination}:{digest}", kind, destination, message, tuple(sorted(computations)))


def detect(conn: Connection, attempt: Attempt, max_failed_share: float) -> list[Incident]:
    """The incidents an attempt shows (none for a dry run, a lock held elsewhere or a signal stop)."""
    if not _is_incident(attempt):
        return []
    scope = attempt.computations
    if attempt.result is None:
        reason = str(attempt.error) if attempt.error is not None else "the run stopped without a result"
        return [_incident("run_failed", d, f"run failed: {reason}", scope) for d in attempt.destinations]
    result = attempt.result
    found: list[Incident] = []
    for dest, key, n, error in store_incidents.held_changes(conn, result.run_id):
        found.append(_incident("guard", dest, f"{key} held back for {dest} ({n} changes): {error}", [key]))
    per_destination = result.counts.get("destinations", {})
    for dest in attempt.destinations:
        error = result.destinations.get(dest, {}).get("error")
        if result.status == "failed" and error:
            found.append(_incident("run_failed", dest, f"run {result.run_id} failed: {error}", scope))
            continue  # its changes all stay pending: that is this incident, not another one
        if error == STOPPED:
            continue  # a restart, not a delivery problem: what is pending goes out with the next run
        counts = per_destination.get(dest)
        undelivered = counts["failed"] + counts["pending"] if counts else 0
        deliverable = undelivered + (counts["sent"] if counts else 0)
        if deliverable and undelivered / deliverable > max_failed_share:
            found.append(
                _incident(
                    "failures",
                    dest,
                    f"{undelivered} of {deliverable} changes to {dest} failed or stay pending in run "
                    f"{result.run_id} ({undelivered / deliverable:.0%}); see `audience-sync diff --run "
                    f"{result.run_id} --destination {dest} --status failed`",
                    scope,
                )
            )
    return found


def _recoverable(destination: str, computations: Sequence[str], attempt: Attempt) -> bool:
    """Whether this attempt saw enough to say an incident is over: it covered its destination and computations."""
    return destination in attempt.destinations and set(computations) <= set(attempt.computations)


def _post(url: str, text: str, timeout: float) -> bool:
    try:  # ``timeout`` bounds the whole post: an alert hook that trickles its answer cannot hold the scheduler
        with deadline_client(proxy_for=url, timeout=timeout) as client, within(timeout):
            response = client.post(url, json={"text": text})
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:  # its text holds the URL, which is a secret
        log.warning(
            "the alert webhook answered HTTP %d; the alert is posted after the next run", exc.response.status_code
        )
        return False
    except httpx.HTTPError as exc:
        log.warning(
            "could not reach the alert webhook (%s); the alert is posted after the next run", type(exc).__name__
        )
        return False
    return True


def _lines(items: Iterable[str]) -> str:
    return "\n".join(f"• {item}" for item in items)


def _describe(row: Row[Any]) -> str:
    return f"{row.kind} {row.destination} ({', '.join(row.computations)}): was: {row.message}"


def notify(engine: Engine, config: AlertsConfig, attempt: Attempt, *, timeout: float = 10.0) -> AlertReport:
    """Open and close incidents for ``attempt`` and post what is new; a no-op when alerts are not configured.

    Guarantees: each incident is posted once while it lasts and once when it recovers, also when several
    processes finish runs at once; an alert that could not be posted is kept and tried again after the next
    run; the run's outcome is never changed.
    """
    url = config.webhook_url
    if url is None or not _is_incident(attempt):
        return AlertReport()
    run_id = attempt.result.run_id if attempt.result is not None else None
    now = utcnow()
    with engine.begin() as conn:
        active = {i.incident: i for i in detect(conn, attempt, config.max_failed_share)}
        open_rows = store_incidents.open_incidents(conn)
        known = {r.incident for r in open_rows}
        opened = [i for key, i in active.items() if key not in known]
        store_incidents.add(
            conn,
            (
                {
                    "incident": i.incident,
                    "kind": i.kind,
                    "destination": i.destination,
                    "computations": list(i.computations),
                    "message": i.message,
                    "run_id": run_id,
                    "opened_at": now,
                    "notified_at": None,
                }
                for i in opened
            ),
        )
        recovered = [
            r.incident
            for r in open_rows
            if r.incident not in active and _recoverable(r.destination, r.computations, attempt)
        ]
        # never alerted: nothing to announce
        store_incidents.drop_unannounced(conn, recovered)
        # claim the unposted alerts (another process may be doing the same)
        claimed = store_incidents.claim_unposted(conn, now)
        # claim the recoveries to announce by deleting them
        announce = store_incidents.claim_recoveries(conn, recovered)
    posted = 0
    host = socket.gethostname()
    secret = url.get_secret_value()
    if claimed:
        ordered = sorted(claimed, key=lambda r: (r.opened_at, r.incident))
        text = f"audience-sync on {host}: {len(ordered)} problem(s)\n" + _lines(r.message for r in ordered)
        if _post(secret, text, timeout):
            posted += 1
        else:
            with engine.begin() as conn:  # give the claim back: the next run posts it
                store_incidents.release_claim(conn, [r.incident for r in claimed], now)
    if announce:
        what = f"run {run_id}" if run_id is not None else "the latest run"
        text = f"audience-sync on {host}: recovered in {what}\n" + _lines(_describe(r) for r in announce)
        if _post(secret, text, timeout):
            posted += 1
        else:
            with engine.begin() as conn:  # put them back: the recovery is announced after the next run
                store_incidents.add(conn, (r._mapping for r in announce))
    return AlertReport(opened=tuple(i.incident for i in opened), recovered=tuple(recovered), posted=posted)
