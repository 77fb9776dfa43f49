"""The daemon as operators run it: ``twistd -n qqchat`` in its own process."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from daemon_process import DaemonProcess


class LineClient:
    """A blocking socket client, like telnet: one JSON object per line."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rwb")

    def send(self, **frame: Any) -> None:
        self.file.write(json.dumps(frame).encode() + b"\r\n")  # telnet's line ending
        self.file.flush()

    def recv(self) -> dict[str, Any]:
        line = self.file.readline()
        assert line, "connection closed"
        return json.loads(line)

    def until(self, type: str) -> dict[str, Any]:
        while True:
            frame = self.recv()
            if frame["type"] == type:
                return frame

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_messages_survive_a_killed_daemon(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path).start()
    try:
        alice = LineClient(daemon.port)
        for name in ["alice", "bob"]:
            alice.send(type="register", name=name, password="password1")
            assert alice.recv()["type"] == "register"
        alice.send(type="login", name="alice", password="password1", req=1)
        assert alice.recv()["user"]["name"] == "alice"
        alice.until("synced")
        alice.send(type="chat", to=2, text="are you there?", req=2)
        sent = alice.until("chat")
        assert sent["req"] == 2
        daemon.kill()  # SIGKILL right after the reply: the message must be on disk

        daemon = DaemonProcess(tmp_path, port=daemon.port).start()
        bob = LineClient(daemon.port)
        bob.send(type="login", name="bob", password="password1")
        assert bob.recv()["type"] == "login"
        msg = bob.recv()
        assert (msg["type"], msg["id"], msg["text"], msg["name"]) == (
            "message", sent["id"], "are you there?", "alice")
        assert bob.recv() == {"type": "synced", "count": 1}
        bob.close()
    finally:
        daemon.stop()


def test_sigterm_says_goodbye_and_exits_promptly(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path).start()
    c = LineClient(daemon.port)
    c.send(type="register", name="alice", password="password1")
    c.recv()
    c.send(type="login", name="alice", password="password1")
    c.until("synced")
    proc = daemon.proc
    assert proc is not None
    started = time.monotonic()
    daemon.stop()
    # twistd re-raises the stopping signal once shutdown is complete, as daemons should
    assert proc.returncode in (0, -15)
    assert time.monotonic() - started < 5
    assert c.recv() == {"type": "server_shutdown"}
    assert c.file.readline() == b""
    log = daemon.output()
    for expected in ["listening on 127.0.0.1", "connection open from", "login 1 alice",
                     "connection closed from", "Server Shut Down"]:
        assert expected in log, expected
    assert "password1" not in log
