"""Gist: identify as ``POST /contacts`` (all of a user's changed keys in one call), Bearer auth."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby
from typing import Any

import httpx

from ..changes import SENT, Change, Outcome
from ..config import GistDestination
from ..errors import CredentialsRejected, PermanentDestinationError, TransientDestinationError
from .base import Destination
from .http import RetryPolicy, call_with_retries


class GistContacts(Destination):
    """Creates or updates one Gist contact per user with ``custom_properties`` set to the changed values.

    Users without an email are never sent (the diff marks them skipped). The API key goes only into the
    ``Authorization`` header.
    """

    required_identifiers = ("user_id", "email")

    def __init__(self, config: GistDestination, *, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(config.name)
        self.policy = RetryPolicy(max_retries=config.max_retries)
        self.client = httpx.Client(
            base_url=config.endpoint.rstrip("/"),
            headers={
                "Authorization": f"Bearer {config.api_key.get_secret_value()}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": "audience-sync",
            },
            timeout=config.timeout,
            transport=transport,
        )

    def _contact(self, changes: list[Change]) -> dict[str, Any]:
        first = changes[0]
        email = next((c.email for c in changes if c.email), None)
        return {
            "user_id": first.user_id,
            "email": email,
            "custom_properties": {c.computation_key: c.new_value for c in changes},
        }

    def deliver(self, changes: Sequence[Change]) -> dict[int, Outcome]:
        outcomes: dict[int, Outcome] = {}
        for _user, group in groupby(changes, key=lambda c: c.user_id):
            user_changes = list(group)
            body = self._contact(user_changes)
            try:
                call_with_retries(
                    lambda body=body: self.client.post("/contacts", json=body),  # type: ignore[misc]
                    destination=self.name,
                    policy=self.policy,
                )
                outcome = SENT
            except CredentialsRejected as exc:
                exc.partial = outcomes  # what was delivered before the refusal is still recorded
                raise
            except TransientDestinationError as exc:
                outcome = Outcome("pending", str(exc))
            except PermanentDestinationError as exc:
                outcome = Outcome("failed", str(exc))
            outcomes.update(dict.fromkeys((c.diff_id for c in user_changes), outcome))
        return outcomes

    def close(self) -> None:
        self.client.close()
