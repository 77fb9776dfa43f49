"""The daemon as operators run it: ``twistd -n qqchat`` in its own process."""

from __future__ import annotations

import json
import socket
import threading
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


def test_sigterm_during_traffic_loses_no_acknowledged_message(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path).start()
    setup = LineClient(daemon.port)
    names = ["bob", "s1", "s2", "s3", "s4"]
    for name in names:
        setup.send(type="register", name=name, password="password1")
        assert setup.recv()["type"] == "register"
    setup.close()
    replied: dict[int, str] = {}  # message id -> text, for every send that got its reply
    lock = threading.Lock()
    enough = threading.Event()
    failures: list[BaseException] = []

    def stream(name: str) -> None:
        c = LineClient(daemon.port)
        c.send(type="login", name=name, password="password1")
        c.until("synced")
        try:
            for n in range(5000):  # bounded; the stop comes long before
                text = f"{name} {n}"
                c.send(type="chat", to=1, text=text, req=n)
                frame = c.recv()
                if frame.get("code") == "rate_limited":  # past the user's burst
                    time.sleep(frame["retry_after"])
                    continue
                if frame["type"] != "chat":
                    assert frame == {"type": "server_shutdown"}, frame
                    return
                with lock:
                    replied[frame["id"]] = text
                    if len(replied) >= 200:
                        enough.set()
        except (AssertionError, OSError, ValueError) as e:
            if "connection closed" not in str(e):
                failures.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=stream, args=(n,), daemon=True) for n in names[1:]]
    for t in threads:
        t.start()
    assert enough.wait(30)
    daemon.stop()  # SIGTERM while four senders are mid-stream
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert failures == []

    daemon = DaemonProcess(tmp_path, port=daemon.port).start()
    try:
        bob = LineClient(daemon.port)
        bob.send(type="login", name="bob", password="password1")
        assert bob.recv()["type"] == "login"
        got: dict[int, str] = {}
        while True:
            frame = bob.recv()
            if frame["type"] == "synced":
                break
            assert frame["id"] not in got, "delivered twice"
            got[frame["id"]] = frame["text"]
        assert frame["count"] == len(got)
        # every send that was answered is there, as sent; an unanswered one may be too
        assert {i: got.get(i) for i in replied} == replied
        bob.close()
    finally:
        daemon.stop()
