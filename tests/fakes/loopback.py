"""What every fake server shares: a threaded HTTP/1.1 server on 127.0.0.1, a port of its own, JSON answers, and
gates that hold a chosen request until the test has acted (killed the client, sent it a signal)."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

#: how long a test waits for a run to reach a gate: generous, since a loaded machine is slow, not wrong
GATE_TIMEOUT = 120.0


class Gate:
    """Holds the request numbered ``index`` (0 = a fake's first request) until the test releases it.

    The moment is exact: the client has sent that request and waits for its answer, and nothing after it has
    happened. ``accepted``: the fake applies the request before holding it, so the destination has taken what
    the client never hears acknowledged (a lost answer). :meth:`drop` closes the connection unanswered.
    """

    def __init__(self, index: int, *, accepted: bool = False) -> None:
        self.index = index
        self.accepted = accepted
        self.reached = threading.Event()
        self._open = threading.Event()
        self.dropped = False

    def wait(self, timeout: float = GATE_TIMEOUT) -> None:
        """Block until a request reached the gate; AssertionError if none did within ``timeout``."""
        assert self.reached.wait(timeout), f"no request reached gate {self.index} within {timeout:g} s"

    def release(self) -> None:
        """Let the held request go on: it is answered as if it had never been held."""
        self._open.set()

    def drop(self) -> None:
        """Let the held request go without an answer (its client is gone)."""
        self.dropped = True
        self._open.set()

    def hold(self) -> None:
        """Called by the fake's handler: signal arrival, then wait to be released."""
        self.reached.set()
        self._open.wait()


class Gates:
    """A fake's gates by request number, and the count of requests it has seen."""

    def __init__(self) -> None:
        self._gates: dict[int, Gate] = {}
        self._lock = threading.Lock()
        self.count = 0

    def add(self, index: int, *, accepted: bool = False) -> Gate:
        gate = Gate(index, accepted=accepted)
        with self._lock:
            assert index >= self.count, f"request {index} has gone by already ({self.count} seen)"
            self._gates[index] = gate
        return gate

    def next(self) -> Gate | None:
        """Number the request being handled; its gate, if one was set."""
        with self._lock:
            index, self.count = self.count, self.count + 1
            return self._gates.pop(index, None)

    def remove(self, gate: Gate) -> None:
        """Take ``gate`` away, unreached or not, and let a request it holds go unanswered."""
        with self._lock:
            if self._gates.get(gate.index) is gate:
                del self._gates[gate.index]
        gate.drop()

    def release_all(self) -> None:
        with self._lock:
            gates, self._gates = list(self._gates.values()), {}
        for gate in gates:
            gate.drop()


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet handler with keep-alive that answers JSON."""

    protocol_version = "HTTP/1.1"
    # headers and body go out as two writes: without TCP_NODELAY each answer waits for the client's delayed ACK
    # (about 40 ms on Linux), which made every request to a fake take that long
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except ConnectionError:  # the client was killed while we held its request: nobody to answer
            self.close_connection = True

    def hang_up(self) -> None:
        """End the connection without an answer."""
        self.close_connection = True


class _QuietServer(ThreadingHTTPServer):
    """A threaded server that does not print a traceback when a client it serves is killed."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class LoopbackServer:
    """Runs the handler class from :meth:`handler` on a free port of 127.0.0.1 in a background thread."""

    def __init__(self) -> None:
        self.gates = Gates()
        self._server = _QuietServer(("127.0.0.1", 0), self.handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def hold(self, index: int, *, accepted: bool = False) -> Gate:
        """Hold this server's request number ``index`` (counting from 0) until the test releases it."""
        return self.gates.add(index, accepted=accepted)

    def unhold(self, gate: Gate) -> None:
        """Remove ``gate``: a request it holds goes unanswered (its client is gone), a later one is not held."""
        self.gates.remove(gate)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.gates.release_all()  # a held request must not keep the server from shutting down
        self._server.shutdown()
        self._server.server_close()
