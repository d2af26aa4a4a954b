"""A fake Gist REST API on loopback: validates auth, paths and required fields as Gist documents them,
keeps contacts in memory, and injects faults on demand."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.loopback import JsonHandler, LoopbackServer


@dataclass
class Fault:
    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    apply_first: bool = False  # the request takes effect, then the answer is an error (a lost answer)


@dataclass
class Trap:
    """Catches the POSTs whose parsed body ``match`` accepts (at most ``times`` of them; None: all).

    Each caught request is counted and signals ``caught``; with ``hold`` it then waits (outside the fake's lock, so
    other requests go on) until :meth:`release`; then it is answered with ``fault`` if given, else applied as
    usual. A test drives a run with it from events: "the run's request for u1 has arrived and is waiting".
    """

    match: Callable[[str, dict[str, Any]], bool]
    hold: bool = False
    fault: Fault | None = None
    times: int | None = None
    count: int = 0
    caught: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float = 120.0) -> None:
        """Block until a request was caught; AssertionError if none came within ``timeout`` (a broken run)."""
        assert self.caught.wait(timeout), f"no request was caught within {timeout:g} s"

    def release(self) -> None:
        self.released.set()


def sets(user_id: str, key: str, value: Any) -> Callable[[str, dict[str, Any]], bool]:
    """A Trap match: a contact update of ``user_id`` setting ``key`` to ``value``."""
    return lambda path, body: (
        path == "/contacts"
        and body.get("user_id") == user_id
        and (body.get("custom_properties") or {}).get(key, object()) == value
    )


class FakeGist(LoopbackServer):
    def __init__(self, api_key: str = "gist-test-key") -> None:
        self.api_key = api_key
        self.contacts: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.faults: deque[Fault] = deque()
        self.user_faults: dict[str, Fault] = {}
        self.traps: list[Trap] = []
        self.lock = threading.Lock()
        super().__init__()

    def trap(
        self,
        match: Callable[[str, dict[str, Any]], bool],
        *,
        hold: bool = False,
        fault: Fault | None = None,
        times: int | None = None,
    ) -> Trap:
        """Add a :class:`Trap` (traps are tried in the order they were added; the first that matches catches)."""
        trap = Trap(match, hold, fault, times)
        with self.lock:
            self.traps.append(trap)
        return trap

    def release_all(self) -> None:
        """Let every held request go on (at the end of a test, so that no client waits for ever)."""
        for trap in self.traps:
            trap.release()

    def _catch(self, path: str, body: dict[str, Any]) -> Trap | None:
        for trap in self.traps:
            if (trap.times is None or trap.count < trap.times) and trap.match(path, body):
                trap.count += 1
                trap.caught.set()
                return trap
        return None

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
            def do_GET(self) -> None:
                """``GET /contacts?user_id=U`` (the contact, or 404) and ``GET /contacts?page=P&per_page=N`` (a page
                of contacts in user id order, with ``pages``); the queued faults apply to reads too."""
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                with fake.lock:
                    fake.requests.append({"method": "GET", "path": self.path, "headers": dict(self.headers)})
                    if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                        return self.answer(
                            401, {"errors": [{"code": "unauthorized", "message": "Invalid access token"}]}
                        )
                    if url.path != "/contacts":
                        return self.answer(404, {"errors": [{"code": "not_found", "message": "Not found"}]})
                    if fake.faults:
                        fault = fake.faults.popleft()
                        return self.answer(
                            fault.status,
                            fault.body or {"errors": [{"code": "error", "message": "injected"}]},
                            fault.headers,
                        )
                    if "user_id" in query:
                        contact = fake.contacts.get(query["user_id"])
                        if contact is None:
                            return self.answer(404, {"errors": [{"code": "not_found", "message": "Contact not found"}]})
                        return self.answer(200, {"contact": contact})
                    page, per_page = int(query.get("page", "1")), min(int(query.get("per_page", "50")), 60)
                    ordered = [fake.contacts[u] for u in sorted(fake.contacts)]
                    total_pages = max(1, -(-len(ordered) // per_page))
                    body = {
                        "contacts": ordered[(page - 1) * per_page : page * per_page],
                        "pages": {"page": page, "per_page": per_page, "total_pages": total_pages},
                    }
                    return self.answer(200, body)

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
                    trap = fake._catch(self.path, body)
                if trap is not None and trap.hold:
                    trap.released.wait(120.0)
                with fake.lock:
                    fault = (trap.fault if trap is not None else None) or fake.user_faults.get(str(body["user_id"]))
                    if fault is None and trap is None and fake.faults:
                        fault = fake.faults.popleft()
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
