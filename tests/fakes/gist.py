"""A fake Gist REST API on loopback: validates auth, paths and required fields as Gist documents them,
keeps contacts in memory, and injects faults on demand."""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import JsonHandler, LoopbackServer


@dataclass
class Fault:
    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    apply_first: bool = False  # the request takes effect, then the answer is an error (a lost answer)


class FakeGist(LoopbackServer):
    def __init__(self, api_key: str = "gist-test-key") -> None:
        self.api_key = api_key
        self.contacts: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.faults: deque[Fault] = deque()
        self.user_faults: dict[str, Fault] = {}
        self.lock = threading.Lock()
        super().__init__()

    def fail_next(
        self,
        count: int,
        status: int,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        apply_first: bool = False,
    ) -> None:
        for _ in range(count):
            self.faults.append(Fault(status, body, headers or {}, apply_first))

    def properties(self, user_id: str) -> dict[str, Any]:
        return dict(self.contacts.get(user_id, {}).get("custom_properties", {}))

    def _apply(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path == "/events":
            self.events.append(body)
            return {"event": body}
        contact = self.contacts.setdefault(body["user_id"], {"user_id": body["user_id"], "custom_properties": {}})
        contact["email"] = body["email"]
        contact["custom_properties"].update(body.get("custom_properties") or {})
        return {"contact": contact}

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:
                raw = self.read_body()
                with fake.lock:
                    fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": raw.decode()})
                    if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                        return self.answer(
                            401, {"errors": [{"code": "unauthorized", "message": "Invalid access token"}]}
                        )
                    if self.path not in ("/contacts", "/events"):
                        return self.answer(404, {"errors": [{"code": "not_found", "message": "Not found"}]})
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        return self.answer(400, {"errors": [{"code": "bad_request", "message": "Invalid JSON"}]})
                    required = ("user_id", "email") if self.path == "/contacts" else ("event_name", "email")
                    missing = [k for k in required if not body.get(k)]
                    if missing:
                        return self.answer(
                            422, {"errors": [{"code": "parameter_invalid", "message": f"{missing[0]} is required"}]}
                        )
                    fault = fake.user_faults.get(str(body["user_id"])) or (
                        fake.faults.popleft() if fake.faults else None
                    )
                    if fault is not None:
                        if fault.apply_first:
                            fake._apply(self.path, body)
                        return self.answer(
                            fault.status,
                            fault.body or {"errors": [{"code": "error", "message": "injected"}]},
                            fault.headers,
                        )
                    answer = fake._apply(self.path, body)
                return self.answer(200, answer)

        return Handler
