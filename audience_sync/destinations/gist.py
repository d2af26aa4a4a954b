"""Gist: identify as ``POST /contacts`` (all of a user's changed keys in one call), track as ``POST /events``;
read back (``verify``, ``adopt``) as ``GET /contacts?user_id=`` and the paged ``GET /contacts``.

Bearer auth. Users without ``user_id`` and ``email`` never reach this module: the diff marks them skipped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import groupby
from typing import Any

import httpx

from ..config import GistDestination
from ..errors import DestinationError, PermanentDestinationError
from ..model import SENT, Change, Outcome, OutcomeStatus
from .base import Destination
from .batching import encode
from .http import HttpSender
from .messages import MessageOptions, event_name, track_properties

#: one HTTP call: its path, its JSON body, and the changes it carries
Call = tuple[str, dict[str, Any], list[Change]]


def answer_errors(response: httpx.Response) -> str | None:
    """What a 2xx answer's ``errors`` list says (Gist can answer 200 with errors for what it did not take), or
    None when it has none: only then is the call acknowledged."""
    try:
        body = response.json() if response.content else None
    except ValueError:
        return None  # not JSON: nothing says it was refused
    errors = body.get("errors") if isinstance(body, dict) else None
    if not errors:
        return None
    items = errors if isinstance(errors, list) else [errors]
    texts = [str(e.get("message") or e.get("code") or e) if isinstance(e, dict) else str(e) for e in items]
    return f"HTTP {response.status_code} with errors: " + "; ".join(texts)[:500]


def property_value(value: Any, list_values: str) -> Any:
    """A value as a Gist custom property takes it: strings, numbers, booleans and null as they are; a list as
    ``list_values`` says (``join``: its items as text joined with ", ", ``json``: its JSON text); an object
    as its JSON text."""
    if isinstance(value, list) and list_values == "join":
        return ", ".join(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in value)
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


def list_from_property(held: Any, list_values: str) -> Any:
    """The list a custom property holds for a list-valued key, read back as :func:`property_value` wrote it
    (``join``: split at ", "; ``json``: its JSON text); anything else as it is."""
    if not isinstance(held, str):
        return held
    if list_values == "join":
        return held.split(", ") if held else []
    try:
        parsed = json.loads(held)
    except ValueError:
        return held
    return parsed if isinstance(parsed, list) else held


class GistContacts(Destination):
    """Creates or updates one Gist contact per user with ``custom_properties`` set to the changed values, and
    with ``send`` including ``track`` posts an event per change. A change is sent when all its calls were."""

    def __init__(
        self,
        config: GistDestination,
        *,
        transport: httpx.BaseTransport | None = None,
        before_attempt: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config.name, before_attempt=before_attempt)
        self.config = config
        self.options = MessageOptions.of(config)
        self.sender = HttpSender.for_destination(
            config,
            base_url=config.endpoint,
            transport=transport,
            before_attempt=self.check_fence,
            headers={"Authorization": f"Bearer {config.api_key.get_secret_value()}", "Accept": "application/json"},
        )
        self.sender.keep_answers = True  # a 2xx can still carry `errors`: read it

    def property_value(self, value: Any) -> Any:
        """A value as a Gist custom property takes it (see :func:`property_value`)."""
        return property_value(value, self.config.list_values)

    def calls(self, changes: Sequence[Change]) -> list[Call]:
        """The HTTP calls for a chunk: a contact per user (identify), an event per change (track)."""
        out: list[Call] = []
        occurred_at = int(time.time())  # when the changes are sent: Gist takes Unix seconds
        for user_id, group in groupby(changes, key=lambda c: c.user_id):
            user_changes = list(group)
            email = next((c.email for c in user_changes if c.email), None)
            if "identify" in self.config.send:
                contact = {
                    "user_id": user_id,
                    "email": email,
                    "custom_properties": {c.computation_key: self.property_value(c.new_value) for c in user_changes},
                }
                out.append(("/contacts", contact, user_changes))
            if "track" in self.config.send:
                for c in user_changes:
                    event = {
                        "event_name": event_name(c, self.options),
                        "email": c.email or email,
                        "user_id": user_id,
                        "properties": track_properties(c),
                        "occurred_at": occurred_at,
                    }
                    out.append(("/events", event, [c]))
        return out

    def _call(self, call: Call) -> list[tuple[int, Outcome]]:
        path, payload, changes = call
        try:
            response = self.sender.post(path, content=encode(payload))
            refused = answer_errors(response)
            outcome = (
                SENT if refused is None else Outcome(OutcomeStatus.FAILED, f"destination {self.name!r}: {refused}")
            )
        except DestinationError as exc:
            if exc.stops_destination:
                raise  # credentials refused, or asked to wait too long: settled by the sender
            outcome = Outcome(
                OutcomeStatus.FAILED if isinstance(exc, PermanentDestinationError) else OutcomeStatus.PENDING, str(exc)
            )
        return [(c.diff_id, outcome) for c in changes]

    def deliver(self, changes: Sequence[Change]) -> dict[int, Outcome]:
        return self.sender.settle(self._call, self.calls(changes))

    def read_contact(self, user_id: str) -> dict[str, Any] | None:
        """What Gist holds for ``user_id`` (``GET /contacts?user_id=``): the contact, or None when it has none."""
        response = self.sender.get("/contacts", params={"user_id": user_id})
        if response is None:
            return None
        contact = response.json().get("contact")
        return contact if isinstance(contact, dict) else None

    def read_contacts(self, per_page: int = 50) -> Iterator[dict[str, Any]]:
        """Every contact Gist holds, a page at a time (``GET /contacts?page=&per_page=``)."""
        page = 1
        while True:
            response = self.sender.get("/contacts", params={"page": page, "per_page": per_page})
            body = response.json() if response is not None else {}
            contacts = body.get("contacts") or []
            yield from (c for c in contacts if isinstance(c, dict))
            total = (body.get("pages") or {}).get("total_pages")
            if not contacts or (isinstance(total, int) and page >= total):
                return
            page += 1

    def close(self) -> None:
        self.sender.close()

    def abort(self) -> None:
        self.sender.abort()
