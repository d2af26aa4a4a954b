"""A loopback HTTP server that records every request and answers 200 (webhook receiver, peer checks)."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import JsonHandler, LoopbackServer


class CaptureServer(LoopbackServer):
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[dict[str, Any]] = []
        super().__init__()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        capture = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:
                raw = self.read_body()
                capture.requests.append({"path": self.path, "headers": dict(self.headers), "body": raw})
                self.answer(capture.status, {})

        return Handler
