"""Loopback HTTP servers that misbehave the way real ones do, written on raw sockets so that every byte is ours.

- ``trickle_body``: a 200 status line and headers at once, then a long body one byte at a time;
- ``trickle_headers``: the status line and an endless header, one byte at a time;
- ``silent``: reads the request and never answers;
- ``lying_gzip``: a whole answer of ``status`` that says ``Content-Encoding: gzip`` and is not gzip;
- ``unaccepted``: a listening socket whose accept queue is full, so a connection is never established.

Each request read is counted (``requests``), so that tests wait on it instead of sleeping. A trickle goes on until
the client gives up or the server stops.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from typing import Literal, Self

Mode = Literal["trickle_body", "trickle_headers", "silent", "lying_gzip", "unaccepted"]

#: seconds between two trickled bytes: far less than any timeout a test sets, so a per-read timeout never fires
TRICKLE_INTERVAL = 0.05


class FaultyServer:
    def __init__(self, mode: Mode, *, status: int = 200, body: bytes = b"this is not gzip, whatever it says") -> None:
        self.mode = mode
        self.status = status
        self.body = body
        self.stopped = threading.Event()
        self.seen = threading.Condition()
        self.requests: list[bytes] = []
        self._filler: socket.socket | None = None
        if mode == "unaccepted":
            self._listener = socket.create_server(("127.0.0.1", 0), backlog=0)
            self._server: socketserver.ThreadingTCPServer | None = None
        else:
            self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), self._handler(), bind_and_activate=True)
            self._server.daemon_threads = True
            self._listener = self._server.socket

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        if self._server is not None:
            threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        else:  # one connection fills the accept queue of a backlog of 0: the next ones wait for ever
            self._filler = socket.create_connection(self._listener.getsockname()[:2], timeout=5)
        return self

    def stop(self) -> None:
        self.stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        else:
            if self._filler is not None:
                self._filler.close()
            self._listener.close()

    def _handler(self) -> type[socketserver.BaseRequestHandler]:
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                try:
                    request = _read_request(sock)
                    if request is None:
                        return
                    with server.seen:
                        server.requests.append(request)
                        server.seen.notify_all()
                    server._answer(sock)
                except OSError:  # the client gave up: what a trickle waits for
                    return

        return Handler

    def _trickle(self, sock: socket.socket, data: bytes) -> None:
        for i in range(len(data)):
            if self.stopped.wait(TRICKLE_INTERVAL):
                return
            sock.sendall(data[i : i + 1])

    def _answer(self, sock: socket.socket) -> None:
        if self.mode == "trickle_body":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
            self._trickle(sock, b" " * 99_999)
        elif self.mode == "trickle_headers":
            self._trickle(sock, b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000)
        elif self.mode == "silent":
            self.stopped.wait()
        else:
            sock.sendall(
                f"HTTP/1.1 {self.status} Whatever\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n".encode()
                + self.body
            )


def _read_request(sock: socket.socket) -> bytes | None:
    """The request's head and body (by Content-Length), or None when the client closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        body += chunk
    return head + b"\r\n\r\n" + body
