"""The console's logic without processes: command order, acks, keepalive, exit status.

The network is a StringTransport and time is a task.Clock, so every step is
explicit: what the client sends, and what it shows, after each server frame.
"""

from __future__ import annotations

import json
from collections import deque
from datetime import UTC
from pathlib import Path
from typing import Any

from qqchat_client.console import KEEPALIVE_IDLE, QUIT_TIMEOUT, ChatConsole
from qqchat_client.tokens import TokenStore
from twisted.internet import defer, error, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure


class FakeScreen:
    """A screen whose person answers questions from ``answers`` (None: not a terminal)."""

    def __init__(self, answers: list[str | None] | None = None) -> None:
        self.shown: list[str] = []
        self.prompt = ""
        self.closed = False
        self.answers = deque(answers) if answers is not None else None
        self.asked: list[str] = []

    def show(self, text: str) -> None:
        self.shown.extend(text.split("\n"))

    def set_prompt(self, prompt: str) -> None:
        self.prompt = prompt

    def can_ask_password(self) -> bool:
        return self.answers is not None

    def ask_password(self, prompt: str) -> defer.Deferred[str | None]:
        return self.ask_line(prompt)

    def ask_line(self, prompt: str) -> defer.Deferred[str | None]:
        assert self.answers is not None, "not a terminal"
        self.asked.append(prompt)
        return defer.succeed(self.answers.popleft())

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)


class Harness:
    def __init__(self, password: str | None = "pw", interactive: bool = False,
                 answers: list[str | None] | None = None, tokens: TokenStore | None = None,
                 new_password: str | None = None, raw: bool = False) -> None:
        self.clock = task.Clock()
        self.console = ChatConsole(self.clock, "chat.example:6000", password=password,
                                   interactive=interactive, tz=UTC, tokens=tokens,
                                   new_password=new_password, raw=raw)
        self.proto = self.console.protocol()
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.screen = FakeScreen(answers)
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


# -- names never seen: user_search -------------------------------------------------------


def logged_in(**options: Any) -> Harness:
    h = Harness(**options)
    h.console.line("login alice")
    h.receive(type="login", req=1, **LOGIN_REPLY)
    h.receive(type="synced", count=0)
    h.sent()
    return h


def search_reply(h: Harness, *users: tuple[int, str], more: bool = False) -> None:
    req = h.sent()[-1]
    assert req["type"] == "user_search"
    h.receive(type="user_search", req=req["req"], more=more,
              users=[{"id": uid, "name": name, "friend": False} for uid, name in users])


def test_an_unseen_name_is_looked_up_and_an_exact_match_wins() -> None:
    h = logged_in()
    h.console.line("chat Bob hi")
    assert h.sent() == [{"type": "user_search", "query": "Bob", "limit": 20, "req": 2}]
    h.receive(type="user_search", req=2, more=False, users=[
        {"id": 2, "name": "bob", "friend": False}, {"id": 3, "name": "bobby", "friend": False}])
    assert h.sent() == [{"type": "chat", "to": 2, "text": "hi", "req": 3}]
    h.receive(type="chat", req=3, id=9, ts=0)
    assert h.screen.shown[-1].endswith("you -> bob (2): hi")
    # learnt: the next command needs no search
    h.console.line("addfriend bob")
    assert h.sent() == [{"type": "friend_add", "to": 2, "req": 4}]


def test_a_single_prefix_match_is_taken_and_said() -> None:
    h = logged_in()
    h.console.line("addfriend car")
    search_reply(h, (3, "carol"))
    assert h.sent() == [{"type": "friend_add", "to": 3, "req": 3}]
    assert "'car' is carol (3)." in h.screen.shown


def test_an_ambiguous_prefix_fails_a_script_with_the_candidates() -> None:
    h = logged_in()
    h.console.line("chat al hi")
    search_reply(h, (7, "Alan"), (8, "alba"), more=True)
    assert h.sent() == []  # nothing was sent to anyone
    assert h.screen.shown[-1] == ("chat failed: 'al' matches several users: Alan (7), "
                                  "alba (8) and more; give the id or the whole name.")
    h.console.end_of_input()
    h.receive(type="logout", req=3)
    h.drop()
    assert h.status() == 1


def test_an_ambiguous_prefix_asks_in_a_terminal() -> None:
    h = logged_in(answers=["2"])
    h.console.line("chat al hi")
    search_reply(h, (7, "Alan"), (8, "alba"))
    assert h.screen.asked == ["Which one for chat? Number or name (Enter cancels): "]
    assert "  1) Alan (7)" in h.screen.shown and "  2) alba (8)" in h.screen.shown
    assert h.sent() == [{"type": "chat", "to": 8, "text": "hi", "req": 3}]


def test_an_ambiguous_prefix_can_be_cancelled() -> None:
    h = logged_in(answers=[""])
    h.console.line("chat al hi")
    search_reply(h, (7, "Alan"), (8, "alba"))
    assert h.sent() == []
    assert h.screen.shown[-1] == "chat cancelled."


def test_no_such_user() -> None:
    h = logged_in()
    h.console.line("chat zed hi")
    search_reply(h)
    assert h.sent() == []
    assert h.screen.shown[-1] == ("chat failed: no user is called 'zed', nor has a name "
                                  "starting with it.")


def test_a_refused_search_fails_the_command_in_words() -> None:
    h = Harness()
    h.console.line("chat bob hi")
    h.receive(type="error", req=1, code="not_logged_in", message="log in first")
    assert h.screen.shown == ["chat failed: log in first."]
    assert h.sent() == [{"type": "user_search", "query": "bob", "limit": 20, "req": 1}]


# -- saved sessions ------------------------------------------------------------------------

TOKEN = "t" * 43


def test_login_remember_saves_the_token_and_quit_keeps_it(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    h = Harness(tokens=store, interactive=True)
    h.console.line("login --remember alice")
    assert h.sent() == [{"type": "login", "name": "alice", "password": "pw", "remember": True,
                         "req": 1}]
    h.receive(type="login", req=1, token=TOKEN, **LOGIN_REPLY)
    h.receive(type="message", id=5, **{"from": 2}, name="bob", to=1, text="m", ts=0)
    h.receive(type="synced", count=1)
    saved = store.find("chat.example:6000", "alice")
    assert saved is not None and (saved.token, saved.id) == (TOKEN, 1)
    assert any(line.startswith(f"Session saved in {store.path}") for line in h.screen.shown)
    assert h.sent() == [{"type": "ack", "id": 5, "req": 2}]
    h.console.line("quit")
    # no logout, which would revoke the token; a ping, whose answer means the ack is in
    assert h.sent() == [{"type": "ping", "req": 3}]
    h.receive(type="ack", req=2)
    assert not h.transport.disconnecting
    h.receive(type="pong", req=3)
    assert h.transport.disconnecting
    h.drop()
    assert h.status() == 0
    assert store.find("chat.example:6000", "alice") is not None


def test_login_uses_the_saved_token_without_a_password(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    store.save("chat.example:6000", "alice", 1, TOKEN)
    h = Harness(password=None, tokens=store)
    h.console.line("login ALICE")
    assert h.sent() == [{"type": "login", "token": TOKEN, "req": 1}]
    h.receive(type="login", req=1, token=TOKEN, **LOGIN_REPLY)
    h.receive(type="synced", count=0)
    assert h.screen.shown[0] == "Logged in as alice (1)."
    assert h.screen.shown[-1] == "Offline messages: 0"
    # logout ends the session: the server revokes the token, the client deletes it
    h.console.line("logout")
    assert h.sent() == [{"type": "logout", "req": 2}]
    h.receive(type="logout", req=2)
    assert store.find("chat.example:6000", "alice") is None


def test_a_rejected_token_is_deleted_and_the_password_asked(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    store.save("chat.example:6000", "alice", 1, TOKEN)
    h = Harness(password=None, tokens=store, answers=["pw"])
    h.console.line("login 1")
    assert h.sent() == [{"type": "login", "token": TOKEN, "req": 1}]
    h.receive(type="error", req=1, code="bad_token", message="the session has ended")
    assert store.find("chat.example:6000", "alice") is None
    assert h.screen.asked == ["Password for 1: "]
    assert h.sent() == [{"type": "login", "id": 1, "password": "pw", "req": 2}]
    h.receive(type="login", req=2, **LOGIN_REPLY)
    h.receive(type="synced", count=0)
    assert h.screen.shown[-1] == "Offline messages: 0"


def test_a_rejected_token_in_a_script_without_password_fails_clearly(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    store.save("chat.example:6000", "alice", 1, TOKEN)
    h = Harness(password=None, tokens=store)
    h.console.line("login alice")
    assert h.sent() == [{"type": "login", "token": TOKEN, "req": 1}]
    h.receive(type="error", req=1, code="bad_token", message="the session has ended")
    assert h.sent() == []
    assert "QQCHAT_PASSWORD" in h.screen.shown[-1]
    assert store.find("chat.example:6000", "alice") is None


def test_raw_never_shows_a_token_or_password(tmp_path: Path) -> None:
    h = Harness(tokens=TokenStore(tmp_path), raw=True)
    h.console.line("login --remember alice")
    h.receive(type="login", req=1, token=TOKEN, **LOGIN_REPLY)
    text = "\n".join(h.screen.shown)
    assert TOKEN not in text and '"pw"' not in text
    assert '"token":"***"' in text and '"password":"***"' in text


# -- passwd -----------------------------------------------------------------------------------


def test_passwd_asks_old_and_new_twice_and_keeps_the_saved_session(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    h = Harness(password=None, tokens=store, answers=["old-pw", "old-pw", "new-pw", "new-pw"])
    h.console.line("login --remember alice")
    h.receive(type="login", req=1, token=TOKEN, **LOGIN_REPLY)
    h.receive(type="synced", count=0)
    h.sent()
    h.console.line("passwd")
    assert h.screen.asked[1:] == ["Current password: ", "New password: ",
                                  "The new password again: "]
    assert h.sent() == [{"type": "password_change", "old": "old-pw", "new": "new-pw",
                         "req": 2}]
    h.receive(type="password_change", req=2, token="n" * 43)
    assert store.find("chat.example:6000", "alice").token == "n" * 43  # type: ignore[union-attr]
    assert h.screen.shown[-1].startswith("Password changed")


def test_passwd_new_passwords_must_agree() -> None:
    h = logged_in(answers=["new-pw", "typo-pw"])
    h.console.line("passwd")
    assert h.sent() == []
    assert h.screen.shown[-1] == "passwd failed: the two new passwords differ."


def test_passwd_in_a_script(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    store.save("chat.example:6000", "alice", 1, TOKEN)  # from another run; revoked now
    h = logged_in(tokens=None)
    h.console.tokens = store
    h.console.new_password = None
    h.console.line("passwd")
    assert "QQCHAT_NEW_PASSWORD" in h.screen.shown[-1]
    h.console.new_password = "new-pw"
    h.console.line("passwd")
    assert h.sent() == [{"type": "password_change", "old": "pw", "new": "new-pw", "req": 2}]
    h.receive(type="error", req=2, code="weak_password", message="6 to 256 characters")
    assert h.screen.shown[-1] == "passwd failed: 6 to 256 characters."
    h.console.line("passwd")
    h.receive(type="password_change", req=3)
    assert store.find("chat.example:6000", "alice") is None
    assert h.console.password == "new-pw"  # a later login in the script uses it


def test_passwd_needs_a_login() -> None:
    h = Harness()
    h.console.line("passwd")
    assert h.sent() == []
    assert h.screen.shown == ["passwd failed: log in first."]
