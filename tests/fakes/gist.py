"""A fake Gist REST API on loopback: validates auth, paths and required fields as Gist documents them,
keeps contacts in memory, and injects faults on demand."""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Fault:
    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    apply_first: bool = False  # the request takes effect, then the answer is an error (a lost answer)


class FakeGist:
    def __init__(self, api_key: str = "gist-test-key") -> None:
        self.api_key = api_key
        self.contacts: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.faults: deque[Fault] = deque()
        self.user_faults: dict[str, Fault] = {}
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeGist:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

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

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with fake.lock:
                    fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": raw.decode()})
                    if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                        return self._answer(
                            401, {"errors": [{"code": "unauthorized", "message": "Invalid access token"}]}
                        )
                    if self.path not in ("/contacts", "/events"):
                        return self._answer(404, {"errors": [{"code": "not_found", "message": "Not found"}]})
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        return self._answer(400, {"errors": [{"code": "bad_request", "message": "Invalid JSON"}]})
                    required = ("user_id", "email") if self.path == "/contacts" else ("event_name", "email")
                    missing = [k for k in required if not body.get(k)]
                    if missing:
                        return self._answer(
                            422, {"errors": [{"code": "parameter_invalid", "message": f"{missing[0]} is required"}]}
                        )
                    fault = fake.user_faults.get(str(body["user_id"])) or (
                        fake.faults.popleft() if fake.faults else None
                    )
                    if fault is not None:
                        if fault.apply_first:
                            fake._apply(self.path, body)
                        return self._answer(
                            fault.status,
                            fault.body or {"errors": [{"code": "error", "message": "injected"}]},
                            fault.headers,
                        )
                    answer = fake._apply(self.path, body)
                return self._answer(200, answer)

        return Handler
