"""The real command line in processes of its own, started fast and watched as it runs.

Every command a test runs is a real process (own pid, signals, exit status, stdin/stdout/stderr pipes) running
``python -m audience_sync ARGS``. By default it is forked from a fork server (``tests/zygote.py``, one per test
process) that has imported audience-sync once, so a command starts in milliseconds instead of paying one to two
seconds of interpreter start-up and imports each time; ``AUDIENCE_SYNC_TEST_FRESH=1`` (or ``fresh=True``) starts
a fresh interpreter instead, to check that the fork server hides nothing (it also migrates a new state database
for real, where a forked command clones it as the test process does: ``tests/schema_clone.py``).

:class:`Cli` lets a test act on the run's own progress (a log line on stderr, a fake server's gate) instead of on
wall-clock delays, so that it behaves the same on a loaded machine.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from tests import schema_clone
from tests.fakes.loopback import GATE_TIMEOUT, Gate

ZYGOTE = Path(__file__).with_name("zygote.py")
FRESH = os.environ.get("AUDIENCE_SYNC_TEST_FRESH", "") not in ("", "0")

#: a child of the fork server: its pid and its serial number among the server's children (pids are reused)
Child = tuple[int, int]


class Process(Protocol):
    """What a test needs of a process: :class:`subprocess.Popen` and :class:`Forked` both have it."""

    pid: int
    stdin: IO[str] | None
    stdout: IO[str] | None
    stderr: IO[str] | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


class _Server:
    """The fork server of this test process, started on first use and stopped when the process exits."""

    _instance: _Server | None = None
    _instance_lock = threading.Lock()

    @classmethod
    def get(cls) -> _Server:
        with cls._instance_lock:
            if cls._instance is None or not cls._instance.alive:
                cls._instance = cls()
            return cls._instance

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (open for the server's lifetime)
        self.proc = subprocess.Popen(
            [sys.executable, str(ZYGOTE), str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        theirs.close()
        self.sock = ours
        self.alive = True
        self._spawned: queue.Queue[Child] = queue.Queue()
        self._serial = 0  # children spawned so far: a child is (pid, serial), since the kernel reuses pids
        self._current: dict[int, int] = {}  # pid -> the serial of the child that has it now
        self._exits: dict[Child, int] = {}
        self._changed = threading.Condition()
        self._send_lock = threading.Lock()
        ready = self._receive()
        if ready is None or "ready" not in ready:
            raise RuntimeError(f"the fork server did not start:\n{self.log()}")
        threading.Thread(target=self._listen, name="fork-server", daemon=True).start()
        atexit.register(self.close)

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def _receive(self) -> dict[str, Any] | None:
        try:
            data = self.sock.recv(1 << 16)
        except OSError:  # closed at exit
            return None
        return json.loads(data) if data else None

    def _listen(self) -> None:
        while (message := self._receive()) is not None:
            if "spawned" in message:
                # a pid is given again only once its child was reaped, and the server reports that exit before
                # this spawn: from here on the pid's exit is the new child's, not the one recorded earlier
                pid = int(message["spawned"])
                with self._changed:
                    self._serial += 1
                    self._current[pid] = self._serial
                self._spawned.put((pid, self._serial))
            elif "exit" in message:
                pid = int(message["exit"])
                with self._changed:
                    self._exits[(pid, self._current.pop(pid, 0))] = int(message["code"])
                    self._changed.notify_all()
        with self._changed:
            self.alive = False
            self._changed.notify_all()

    def spawn(self, args: Sequence[str], cwd: Path, env: Mapping[str, str], fds: Sequence[int]) -> Child:
        """Fork a child running ``args``; it is known by its pid and its place among this server's children."""
        request = json.dumps({"args": list(args), "cwd": str(cwd), "env": dict(env)}).encode()
        with self._send_lock:  # requests and their "spawned" answers come in the same order
            socket.send_fds(self.sock, [request], list(fds))
            try:
                return self._spawned.get(timeout=GATE_TIMEOUT)
            except queue.Empty:
                raise RuntimeError(f"the fork server did not answer:\n{self.log()}") from None

    def exit_code(self, child: Child, timeout: float | None) -> int | None:
        """The child's return code once it has been reaped; None if it is still running after ``timeout``. The
        code is this child's own, not that of an earlier child that had its pid (pids are reused once reaped)."""
        with self._changed:
            self._changed.wait_for(lambda: child in self._exits or not self.alive, timeout)
            if child not in self._exits and not self.alive:
                raise RuntimeError(f"the fork server died:\n{self.log()}")
            return self._exits.get(child)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # the server exits when its socket closes; children run on
        self.sock.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Forked:
    """A command forked from the fork server: the parts of :class:`subprocess.Popen` the tests use."""

    def __init__(self, args: Sequence[str], *, cwd: Path, env: Mapping[str, str], stdin: bool) -> None:
        self.args = list(args)
        self._server = _Server.get()
        in_r, in_w = os.pipe() if stdin else (os.open(os.devnull, os.O_RDONLY), -1)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self._child = self._server.spawn(args, cwd, env, [in_r, out_w, err_w])
            self.pid = self._child[0]
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        self.stdin: IO[str] | None = os.fdopen(in_w, "w", encoding="utf-8") if in_w >= 0 else None
        self.stdout: IO[str] | None = os.fdopen(out_r, encoding="utf-8")
        self.stderr: IO[str] | None = os.fdopen(err_r, encoding="utf-8")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.exit_code(self._child, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._server.exit_code(self._child, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never signal a pid that was reaped (and may be reused)
            # reaped by the fork server after poll() looked, its exit not read yet: as subprocess.Popen, a signal
            # to a process that is gone is not an error
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start(
    args: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None, stdin: bool = False, fresh: bool = False
) -> Process:
    """``python -m audience_sync ARGS`` in ``cwd`` with ``env`` added to this process's environment.

    Forked, it clones a new state database from this process's templates, as this process does
    (``tests/schema_clone.py``); a fresh interpreter, or ``env`` with ``schema_clone.MIGRATE_FOR_REAL``, migrates it.
    """
    environ = {**os.environ, **(env or {})}
    if fresh or FRESH:
        return subprocess.Popen(
            [sys.executable, "-m", "audience_sync", *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=environ,
        )
    return Forked(args, cwd=cwd, env={**schema_clone.command_environment(), **environ}, stdin=stdin)


def run_cli(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float = GATE_TIMEOUT,
    fresh: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``audience-sync ARGS`` to its end, as :func:`subprocess.run` with ``capture_output=True, text=True``."""
    with Cli(args, cwd=cwd, env=env, input=input, fresh=fresh) as cli:
        code = cli.wait(timeout)
        return subprocess.CompletedProcess(list(args), code, cli.stdout, cli.stderr)


class Cli:
    """A command in its own process with its output read line by line on helper threads as it comes."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        fresh: bool = False,
    ) -> None:
        self.proc = start(args, cwd=cwd, env=env, stdin=input is not None, fresh=fresh)
        if input is not None:
            assert self.proc.stdin is not None
            threading.Thread(target=self._write, args=(self.proc.stdin, input), daemon=True).start()
        self._changed = threading.Condition()
        self._out: list[str] = []
        self._err: list[str] = []
        self._open = 2  # pipes not yet at their end
        self._readers = [
            threading.Thread(target=self._read, args=(pipe, lines), daemon=True)
            for pipe, lines in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))
        ]
        for reader in self._readers:
            reader.start()

    def __enter__(self) -> Cli:
        return self

    def __exit__(self, *exc: object) -> None:
        """Kill the process if the test left it running (a failed assertion must not leak a waiting run)."""
        if self.proc.poll() is None:
            self.kill()

    @staticmethod
    def _write(pipe: IO[str], text: str) -> None:
        try:
            pipe.write(text)
            pipe.close()
        except BrokenPipeError:  # it ended without reading all of it
            pass

    def _read(self, pipe: IO[str] | None, lines: list[str]) -> None:
        assert pipe is not None
        with pipe:
            for line in pipe:
                with self._changed:
                    lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._open -= 1
            self._changed.notify_all()

    @property
    def stdout(self) -> str:
        with self._changed:
            return "".join(self._out)

    @property
    def stderr(self) -> str:
        with self._changed:
            return "".join(self._err)

    def wait_for_line(self, pattern: str, timeout: float = GATE_TIMEOUT) -> str:
        """The first stderr line matching ``pattern``, once it was written; AssertionError (with the output) if
        the process ended without writing one."""
        regex = re.compile(pattern)

        def found() -> str | None:
            return next((line for line in self._err if regex.search(line)), None)

        with self._changed:
            self._changed.wait_for(lambda: found() is not None or self._open == 0, timeout)
            line = found()
        assert line is not None, f"no line matching {pattern!r} on stderr:\n{self.stderr}"
        return line

    def wait_for_gate(self, gate: Gate, timeout: float = GATE_TIMEOUT) -> None:
        """Wait until one of the process's requests is held at ``gate``; AssertionError if it ended first."""
        deadline = time.monotonic() + timeout
        # the gate's event is set by the fake's thread; between short waits on it, see whether the process ended
        while not gate.reached.wait(0.05):
            if self.proc.poll() is not None and not gate.reached.is_set():
                self.wait()
                raise AssertionError(f"the process ended before reaching gate {gate.index}:\n{self.stderr}")
            assert time.monotonic() < deadline, f"no request reached gate {gate.index} in {timeout:g} s"

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> int:
        """SIGKILL the process and reap it; its return code (``-9`` when the kill, not an exit, ended it)."""
        self.proc.kill()
        return self.wait()

    def wait(self, timeout: float = GATE_TIMEOUT) -> int:
        """Wait for the process to end and its output to be read; its return code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        for reader in self._readers:
            reader.join(timeout)
        return code
