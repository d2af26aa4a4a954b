"""A fork server for the tests' command lines: imports audience-sync once, then forks one child per command.

Each child is a real process of its own (own pid, signals, exit status, file descriptors) that runs
``python -m audience_sync ARGS`` exactly as a fresh interpreter would (``runpy``, the same ``sys.argv``, an uncaught
exception printed as a traceback with exit code 1, atexit handlers at the end); only the one to two seconds of
interpreter start-up and imports are paid once instead of per command. Run by :mod:`tests.processes`:

    python tests/zygote.py FD       # FD: a SOCK_SEQPACKET socket to the test process

Protocol, one JSON object per packet. Test -> server: ``{"args", "cwd", "env"}`` with three file descriptors
(stdin, stdout, stderr) attached. Server -> test: ``{"ready": pid}`` once, ``{"spawned": pid}`` per request in order,
``{"exit": pid, "code": returncode}`` (negative: killed by that signal) when a child has been reaped.

A child makes a new state database as the test process does, cloned from the test process's templates
(``tests/schema_clone.py``: the environment names them; the variable is taken out before the command runs).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import random
import runpy
import select
import signal
import socket
import sys
from pathlib import Path
from typing import Any


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.send(json.dumps(message).encode())


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def serve(fd: int) -> dict[str, Any] | None:
    """Serve requests until the test process hangs up (None); in a forked child, return its request."""
    sock = socket.socket(fileno=fd)
    import audience_sync.cli.main  # noqa: F401  (the expensive part, paid once)

    # Alembic too, and the cloning of new state databases a child installs (tests/schema_clone.py); when tests/ is
    # not on the path (not run from the checkout's root), children migrate their new databases for real
    with contextlib.suppress(ImportError):
        import tests.schema_clone  # noqa: F401

    # what a command imports only when it needs it, and most of the suite's commands need (half of them run on
    # PostgreSQL state): the driver, the Arrow reader and the HTTP client, 0.4 to 0.5 s of CPU a child otherwise
    for lazy in ("psycopg", "adbc_driver_manager.dbapi", "httpx"):
        with contextlib.suppress(ImportError):
            importlib.import_module(lazy)

    # what was imported is never collected: frozen, a child's collections and its exit do not touch (and so do not
    # copy) those pages; a child's exit then takes milliseconds instead of a second
    gc.freeze()

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    _send(sock, {"ready": os.getpid()})
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
        _reap(sock)
        if sock.fileno() not in ready:
            continue
        data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 3)
        if not data:
            return None
        request = json.loads(data)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            # the child: drop the server's plumbing, take the test's pipes as 0/1/2, become the command
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for own in (wake_r, wake_w):
                os.close(own)
            sock.close()
            for target, source in enumerate(fds):
                os.dup2(source, target)
                os.close(source)
            return dict(request)
        for source in fds:
            os.close(source)
        _send(sock, {"spawned": pid})


def become(request: dict[str, Any]) -> None:
    """In the forked child: the cwd, environment and arguments of ``python -m audience_sync ARGS``, then run it."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    schema_clone = sys.modules.get("tests.schema_clone")
    if schema_clone is not None:
        schema_clone.install_for_command(os.environ)  # a new state database is cloned, as in the test process
    random.seed()  # every child would otherwise share the server's random state
    sys.path[0] = str(Path.cwd())  # as `python -m` puts the working directory first
    sys.argv = ["audience_sync", *request["args"]]
    runpy.run_module("audience_sync", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    sys.path[0] = str(Path.cwd())
    child = serve(int(sys.argv[1]))
    if child is not None:
        become(child)  # SystemExit or an uncaught exception ends the child as it would end `python -m`
