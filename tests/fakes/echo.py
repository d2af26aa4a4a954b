"""A loopback destination that refuses every request and echoes it back in the error body, as some APIs and
proxies do: our own headers come back as sent, JSON-escaped, percent-encoded, and with HTTP Basic decoded."""

from __future__ import annotations

import base64
import binascii
import json
from http.server import BaseHTTPRequestHandler
from urllib.parse import quote

from tests.fakes.loopback import JsonHandler, LoopbackServer


class EchoServer(LoopbackServer):
    def __init__(self, status: int = 400) -> None:
        self.status = status
        self.requests = 0
        super().__init__()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        echo = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:
                self.read_body()
                echo.requests += 1
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("content-length", "host")}
                auth = self.headers.get("Authorization", "")
                try:
                    basic = base64.b64decode(auth.removeprefix("Basic "), validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    basic = ""
                lines = [f"basic={basic}", f"quoted={quote(auth, safe='')}"]
                lines += [f"{name}: {value}" for name, value in headers.items()] + [f"json={json.dumps(headers)}"]
                data = ("request rejected\n" + "\n".join(lines)).encode()
                self.send_response(echo.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
