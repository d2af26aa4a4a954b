"""Headless Chromium driven over the DevTools protocol on a pipe: load a page, collect its console errors and
network requests, evaluate JavaScript in it, take a full-page screenshot.

Why a pipe (``--remote-debugging-pipe``) and not a port or ``--dump-dom``: no port to find or race for, no
websocket client to depend on, and no traffic on any socket; the protocol's events say exactly when the page
finished loading (``Page.loadEventFired``) and every console message, uncaught exception, refused load
(Content-Security-Policy) and network request, which ``--dump-dom`` and log scraping only approximate. Every
wait is for a protocol message, bounded by a deadline; nothing sleeps.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--mute-audio",
    "--remote-debugging-pipe",
)


def find_chromium() -> str | None:
    """Debian's ``chromium`` (or whatever ``chromium`` is on PATH), or None."""
    return shutil.which("chromium") or (shutil.which("/usr/bin/chromium"))


class ProtocolError(RuntimeError):
    pass


class Chromium:
    """One headless browser with one page (a DevTools session) in it."""

    def __init__(self, binary: str, user_data_dir: Path, *, timeout: float = 90.0) -> None:
        self.binary = binary
        self.user_data_dir = user_data_dir
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._buffer = b""
        self._next_id = 0
        self.session = ""

    def __enter__(self) -> Chromium:
        commands_r, commands_w = os.pipe()  # we write, Chromium reads on fd 3
        results_r, results_w = os.pipe()  # Chromium writes on fd 4, we read
        # moved above 10 so that bash's 3<&N 4>&M (dash takes single digits only) cannot overwrite one with the other
        child_r = fcntl.fcntl(commands_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(results_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(commands_r)
        os.close(results_w)
        args = [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.user_data_dir}", "about:blank"]
        self.proc = subprocess.Popen(
            ["/bin/bash", "-c", f'exec "$0" "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-', *args],
            pass_fds=(child_r, child_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(child_r)
        os.close(child_w)
        self._write, self._read = commands_w, results_r
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
            self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, browser=True)[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.send(f"{domain}.enable")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self.proc.poll() is None:
                self.send("Browser.close", browser=True)
        except (OSError, ProtocolError, TimeoutError):
            pass
        finally:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stderr is not None:
                self.proc.stderr.close()
            os.close(self._write)
            os.close(self._read)

    # the protocol: JSON messages separated by NUL bytes

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from Chromium in time")
            ready, _, _ = select.select([self._read], [], [], left)
            if ready:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise ProtocolError(f"Chromium closed the pipe (exit code {self.proc.poll()})")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def send(self, method: str, params: dict[str, Any] | None = None, *, browser: bool = False) -> dict[str, Any]:
        """Send one command (to the page's session unless ``browser``) and return its result; events that arrive
        meanwhile are kept in ``events``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if not browser:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise ProtocolError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        """The next event ``method`` of the page (one already received counts), waiting for it if need be."""
        for i, event in enumerate(self.events):
            if event["method"] == method and event.get("sessionId") == self.session:
                return self.events.pop(i)
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._message(deadline)
            if message.get("method") == method and message.get("sessionId") == self.session:
                return message
            if "method" in message:
                self.events.append(message)

    # what a test uses

    def load(self, path: Path) -> None:
        """Open ``path`` and wait until its load event fired; forget the events of earlier pages."""
        self.events.clear()
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        )
        self.send("Page.navigate", {"url": path.resolve().as_uri()})
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (it must be JSON-serialisable)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise ProtocolError(f"evaluating {expression[:80]!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser errors (refused loads, CSP) of the current page."""
        self.send("Runtime.evaluate", {"expression": "0"})  # a round trip: every earlier event has arrived
        errors = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif event["method"] == "Runtime.exceptionThrown":
                errors.append(str(params.get("exceptionDetails", {}).get("text")))
            elif event["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append(str(params["entry"].get("text")))
        return errors

    def requests(self) -> list[str]:
        """URLs of every request the current page made."""
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def screenshot(self, path: Path) -> None:
        """Save a PNG of the whole page (up to 16,000 px tall) at ``path``."""
        metrics = self.send("Page.getLayoutMetrics")
        height = min(int(metrics["cssContentSize"]["height"]) + 1, 16_000)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))
