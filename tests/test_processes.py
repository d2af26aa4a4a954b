"""The fork server's bookkeeping (``tests/processes.py``): a command's exit is its own, whatever pid it had.

The kernel hands a reaped child's pid to a later process; on a busy machine (pid_max 32768, a suite that forks
thousands of commands, threads and database backends) a fork server living for a whole suite sees it happen. A stand-in
server plays the fork server's protocol and gives its second child the pid of its first, reaped one: the
second must then count as running, or a test would take it for ended, and neither signal nor kill it.
"""

from __future__ import annotations

import atexit
from pathlib import Path

import pytest

from tests import processes
from tests.fakes.loopback import GATE_TIMEOUT

#: the fork server's protocol, with every child given the same pid; a child's exit (code 7) is reported when the
#: next one is asked for, before its "spawned", as the real server reports a reaping before the next fork
STAND_IN = """
import json, os, socket, sys

PID = 4242
sock = socket.socket(fileno=int(sys.argv[1]))
sock.send(json.dumps({"ready": os.getpid()}).encode())
children = 0
while True:
    data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 3)
    for fd in fds:
        os.close(fd)
    if not data:
        break
    if children:
        sock.send(json.dumps({"exit": PID, "code": 7}).encode())
    sock.send(json.dumps({"spawned": PID}).encode())
    children += 1
"""


def close_pipes(child: processes.Forked) -> None:
    for pipe in (child.stdin, child.stdout, child.stderr):
        if pipe is not None:
            pipe.close()


def test_a_child_given_the_pid_of_a_reaped_one_is_still_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    monkeypatch.setattr(processes, "ZYGOTE", script)
    server = processes._Server()
    atexit.unregister(server.close)
    monkeypatch.setattr(processes._Server, "_instance", server)  # Forked asks _Server.get() for its server
    children: list[processes.Forked] = []
    try:
        children.append(processes.Forked(["run"], cwd=tmp_path, env={}, stdin=False))
        children.append(processes.Forked(["run"], cwd=tmp_path, env={}, stdin=False))
        first, second = children
        assert first.pid == second.pid
        assert first.wait(GATE_TIMEOUT) == 7
        assert second.poll() is None  # never send_signal() here: pid 4242 is no child of this test
    finally:
        for child in children:
            close_pipes(child)
        server.close()
