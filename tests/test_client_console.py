"""The console's logic without processes: command order, acks, keepalive, exit status.

The network is a StringTransport and time is a task.Clock, so every step is
explicit: what the client sends, and what it shows, after each server frame.
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

from qqchat_client.console import KEEPALIVE_IDLE, QUIT_TIMEOUT, ChatConsole
from twisted.internet import defer, error, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure


class FakeScreen:
    def __init__(self) -> None:
        self.shown: list[str] = []
        self.prompt = ""
        self.closed = False

    def show(self, text: str) -> None:
        self.shown.extend(text.split("\n"))

    def set_prompt(self, prompt: str) -> None:
        self.prompt = prompt

    def can_ask_password(self) -> bool:
        return False

    def ask_password(self, prompt: str) -> defer.Deferred[str | None]:
        raise AssertionError("not a terminal")

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)


class Harness:
    def __init__(self, password: str | None = "pw", interactive: bool = False) -> None:
        self.clock = task.Clock()
        self.console = ChatConsole(self.clock, "chat.example:6000", password=password,
                                   interactive=interactive, tz=UTC)
        self.proto = self.console.protocol()
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.screen = FakeScreen()
        self.console.start(self.screen)

    def sent(self) -> list[dict[str, Any]]:
        lines = self.transport.value().splitlines()
        self.transport.clear()
        return [json.loads(line) for line in lines]

    def receive(self, **frame: Any) -> None:
        self.proto.dataReceived(json.dumps(frame).encode() + b"\n")

    def drop(self) -> None:
        self.proto.connectionLost(Failure(error.ConnectionDone()))

    def status(self) -> int:
        results: list[int] = []
        self.console.done.addCallback(results.append)
        assert results, "the console has not finished"
        return results[0]


LOGIN_REPLY = {"user": {"id": 1, "name": "alice"}, "friends": [], "groups": [],
               "requests": []}


def test_each_command_waits_for_its_reply_and_backlog_is_acked_once() -> None:
    h = Harness()
    h.console.line("login alice")
    h.console.line("who")
    assert h.sent() == [{"type": "login", "name": "alice", "password": "pw", "req": 1}]
    h.receive(type="login", req=1, **LOGIN_REPLY)
    assert h.screen.prompt == "alice> "
    for mid in (5, 7):
        h.receive(type="message", id=mid, **{"from": 2}, name="bob", to=1, text=f"m{mid}",
                  ts=0)
    assert h.sent() == []  # nothing until the backlog is complete
    h.receive(type="synced", count=2)
    assert h.sent() == [{"type": "ack", "id": 7, "req": 2}, {"type": "who", "req": 3}]
    assert h.screen.shown[-1] == "Offline messages: 2"
    assert any(line.endswith("bob (2): m5") for line in h.screen.shown)


def test_live_messages_are_acked_per_burst() -> None:
    h = Harness()
    h.console.line("login alice")
    h.receive(type="login", req=1, **LOGIN_REPLY)
    h.receive(type="synced", count=0)
    h.sent()
    h.receive(type="message", id=10, **{"from": 2}, name="bob", to=1, text="a", ts=0)
    h.receive(type="message", id=11, **{"from": 2}, name="bob", to=1, text="b", ts=0)
    h.clock.advance(0)
    assert h.sent() == [{"type": "ack", "id": 11, "req": 2}]
    h.clock.advance(1)
    assert h.sent() == []


def test_a_message_pushed_twice_is_shown_once() -> None:
    h = Harness()
    h.console.line("login alice")
    h.receive(type="login", req=1, **LOGIN_REPLY)
    h.receive(type="synced", count=0)
    for _ in range(2):
        h.receive(type="message", id=12, **{"from": 2}, name="bob", to=1, text="once", ts=0)
    assert sum(line.endswith("bob (2): once") for line in h.screen.shown) == 1


def test_end_of_input_logs_out_and_exit_status_counts_failures() -> None:
    h = Harness()
    h.console.line("login alice")
    h.console.line("chat")  # usage error: a failed command
    h.receive(type="login", req=1, **LOGIN_REPLY)
    h.receive(type="synced", count=0)
    h.console.end_of_input()
    assert h.sent()[-1] == {"type": "logout", "req": 2}
    h.receive(type="logout", req=2)
    assert h.transport.disconnecting
    h.drop()
    assert h.status() == 1
    assert "usage: chat ID|NAME TEXT" in h.screen.shown
    assert h.screen.shown[-1] == "Logged out." and h.screen.closed


def test_server_errors_fail_the_command() -> None:
    h = Harness()
    h.console.line("login alice")
    h.receive(type="error", req=1, code="bad_credentials", message="wrong user or password")
    assert h.screen.shown == ["login failed: wrong user or password."]
    h.console.line("who")
    assert h.sent()[-1] == {"type": "who", "req": 2}
    h.receive(type="who", req=2, total=0, offset=0, users=[])
    h.console.end_of_input()
    h.drop()
    assert h.status() == 1


def test_no_password_for_a_script_is_a_failure_not_a_prompt() -> None:
    h = Harness(password=None)
    h.console.line("login alice")
    assert h.sent() == []
    assert "QQCHAT_PASSWORD" in h.screen.shown[0]


def test_keepalive_only_when_idle() -> None:
    h = Harness()
    h.clock.advance(KEEPALIVE_IDLE / 2)
    assert h.sent() == []
    h.clock.advance(KEEPALIVE_IDLE / 2)
    assert h.sent() == [{"type": "ping", "req": 1}]
    h.receive(type="pong", req=1)
    assert h.screen.shown == []


def test_lost_connection_is_reported_and_exits_1() -> None:
    h = Harness(interactive=True)
    h.console.line("who")
    h.proto.connectionLost(Failure(error.ConnectionLost("reset by peer")))
    assert h.screen.shown[-1].startswith("Connection to chat.example:6000 lost:")
    assert h.status() == 1


def test_interactive_quit_exits_0_even_after_a_failed_command() -> None:
    h = Harness(interactive=True)
    h.console.line("nonsense")
    h.console.line("quit")
    assert h.transport.disconnecting
    h.drop()
    assert h.status() == 0


def test_quit_does_not_wait_forever_for_the_server() -> None:
    h = Harness(interactive=True)
    h.console.line("login alice")
    h.receive(type="login", req=1, **LOGIN_REPLY)
    h.receive(type="synced", count=0)
    h.console.line("quit")
    assert h.sent()[-1] == {"type": "logout", "req": 2}
    h.clock.advance(QUIT_TIMEOUT)  # no logout reply: close anyway
    assert h.transport.disconnecting
    h.clock.advance(QUIT_TIMEOUT)  # nor a closed connection: abort it
    h.drop()
    assert h.status() == 0
    assert not any("error" in line.lower() for line in h.screen.shown), h.screen.shown


def test_backlog_that_cannot_be_read_ends_the_session_without_acks() -> None:
    h = Harness()
    h.console.line("login alice")
    h.console.line("who")
    h.sent()
    h.receive(type="login", req=1, **LOGIN_REPLY)
    # the server could not read the backlog: an error push, then it closes
    h.receive(type="error", code="unavailable",
              message="offline messages could not be loaded; closing, log in again")
    h.drop()
    assert h.sent() == []  # no ack, and the queued command was never sent
    assert "Server error: offline messages could not be loaded; closing, log in again." \
        in h.screen.shown
    assert h.screen.shown[-1].startswith("Connection to chat.example:6000 lost:")
    assert not any(line.startswith("Offline messages") for line in h.screen.shown)
    assert h.status() == 1


def test_pushes_held_during_the_backlog_are_shown_after_it() -> None:
    h = Harness()
    h.console.line("login alice")
    h.receive(type="login", req=1, **LOGIN_REPLY)
    h.receive(type="message", id=3, **{"from": 2}, name="bob", to=1, text="old", ts=0)
    h.receive(type="synced", count=1)
    h.receive(type="presence", user=2, name="bob", online=True)
    h.receive(type="message", id=4, **{"from": 2}, name="bob", to=1, text="new", ts=0)
    shown = h.screen.shown
    summary = shown.index("Offline messages: 1")
    assert any(line.endswith("bob (2) is online.") for line in shown[summary:])
    h.clock.advance(0)
    assert [f for f in h.sent() if f["type"] == "ack"][-1]["id"] == 4
