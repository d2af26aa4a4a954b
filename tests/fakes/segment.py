"""A fake Segment HTTP Tracking API (and generic webhook receiver) on loopback.

As Segment documents it: ``POST /v1/batch``, HTTP Basic auth with the write key and an empty password, at most
2,500 messages and 500 KB per batch, 32 KB per message, ``messageId`` under 100 characters, ``userId`` or
``anonymousId`` required; messages are deduplicated by ``messageId``. Faults can be injected per request, and a
message with ``userId == "poison"`` makes its whole batch a 400, as an invalid message does.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.gist import Fault
from tests.fakes.loopback import JsonHandler, LoopbackServer

MAX_BATCH_BYTES = 500 * 1024
MAX_MESSAGE_BYTES = 32 * 1024
MAX_MESSAGES = 2500


class FakeSegment(LoopbackServer):
    def __init__(self, write_key: str = "segment-write-key", *, path: str = "/v1/batch", delay: float = 0.0) -> None:
        self.write_key = write_key
        self.path = path
        self.delay = delay
        self.requests: list[dict[str, Any]] = []
        self.messages: dict[str, dict[str, Any]] = {}  # by messageId: what Segment accepted (deduplicated)
        self.duplicates = 0
        self.profiles: dict[str, dict[str, Any]] = {}  # userId -> traits set by identify calls
        self.events: list[dict[str, Any]] = []
        self.faults: deque[Fault] = deque()
        self.lock = threading.Lock()
        super().__init__()

    def fail_next(
        self, count: int, status: int, *, headers: dict[str, str] | None = None, apply_first: bool = False
    ) -> None:
        for _ in range(count):
            self.faults.append(Fault(status, {"success": False, "message": "injected"}, headers or {}, apply_first))

    def _accept(self, batch: list[dict[str, Any]]) -> None:
        for message in batch:
            if message["messageId"] in self.messages:
                self.duplicates += 1
                continue
            self.messages[message["messageId"]] = message
            if message["type"] == "identify":
                self.profiles.setdefault(message["userId"], {}).update(message["traits"])
            else:
                self.events.append(message)

    def _check(self, headers: Any, raw: bytes) -> tuple[int, str] | list[dict[str, Any]]:
        expected = "Basic " + base64.b64encode(f"{self.write_key}:".encode()).decode()
        if headers.get("Authorization") != expected:
            return 401, "Invalid write key"
        if len(raw) > MAX_BATCH_BYTES:
            return 400, "batch over 500 KB"
        if not (headers.get("Content-Type") or "").startswith("application/json"):
            return 400, "content type must be application/json"
        try:
            data = json.loads(raw)
        except ValueError:
            return 400, "invalid JSON"
        batch = data.get("batch") if self.path == "/v1/batch" else (data.get("batch") or [data])
        if not isinstance(batch, list) or not batch or len(batch) > MAX_MESSAGES:
            return 400, "batch must hold 1 to 2500 messages"
        for message in batch:
            if len(json.dumps(message).encode()) > MAX_MESSAGE_BYTES:
                return 400, "message over 32 KB"
            if not message.get("userId") and not message.get("anonymousId"):
                return 400, "userId or anonymousId required"
            if len(message.get("messageId", "")) >= 100 or not message.get("messageId"):
                return 400, "messageId missing or too long"
            if message.get("type") not in ("identify", "track") or "timestamp" not in message:
                return 400, "type and timestamp required"
            if message.get("userId") == "poison":
                return 400, "invalid message"
        return batch

    def _respond(self, path: str, headers: Any, raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self.lock:
            self.requests.append({"path": path, "headers": dict(headers), "body": raw})
            if path != self.path:
                return 404, {"success": False, "message": "not found"}, {}
            checked = self._check(headers, raw)
            if isinstance(checked, tuple):
                return checked[0], {"success": False, "message": checked[1]}, {}
            fault = self.faults.popleft() if self.faults else None
            if fault is not None:
                if fault.apply_first:
                    self._accept(checked)
                return fault.status, fault.body or {}, fault.headers
            self._accept(checked)
        return 200, {"success": True}, {}

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:
                raw = self.read_body()
                gate = fake.gates.next()
                if gate is not None and not gate.accepted:
                    gate.hold()
                    if gate.dropped:
                        return self.hang_up()
                if fake.delay:
                    time.sleep(fake.delay)
                status, body, headers = fake._respond(self.path, self.headers, raw)
                if gate is not None and gate.accepted:
                    gate.hold()
                    if gate.dropped:
                        return self.hang_up()
                return self.answer(status, body, headers)

        return Handler
