"""The console client as a user runs it: a real process, piped stdin, a real daemon.

These tests block on pipes, so the daemon is a separate process too
(``DaemonProcess``); nothing here uses the test's reactor.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_process import PASSWORD, ClientProcess, register, run_client
from daemon_process import DaemonProcess

TIME = r"\[\d\d:\d\d\]"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    with DaemonProcess(tmp_path) as running:
        yield running


def logged_in(port: int, name: str) -> ClientProcess:
    client = ClientProcess(port)
    client.send(f"login {name}")
    client.expect(r"^Offline messages: \d+$")
    return client


def test_two_clients_chat(daemon: DaemonProcess) -> None:
    ids = register(daemon.port, "alice", "bob")
    with logged_in(daemon.port, "bob") as bob, logged_in(daemon.port, "alice") as alice:
        alice.send("who")  # makes the name "bob" known to alice's client
        alice.expect(r"^Online now \(2\): .*bob")
        alice.send("chat bob hello bob")
        alice.expect(rf"^{TIME} you -> bob \({ids['bob']}\): hello bob$")
        bob.expect(rf"^{TIME} alice \({ids['alice']}\): hello bob$")
        bob.send("chat alice hi, alice")  # name learnt from the message
        alice.expect(rf"^{TIME} bob \({ids['bob']}\): hi, alice$")
        assert alice.finish() == 0, alice.transcript
        assert bob.finish() == 0, bob.transcript
    assert "Logged out." in alice.transcript


def test_offline_message_delivered_at_login_once(daemon: DaemonProcess) -> None:
    ids = register(daemon.port, "alice", "bob")
    sent = run_client(daemon.port, f"login alice\nchat {ids['bob']} while you were away\n")
    assert sent.returncode == 0, sent.stdout
    first = run_client(daemon.port, "login bob\n")
    assert first.returncode == 0, first.stdout
    lines = first.stdout.splitlines()
    message = next(i for i, line in enumerate(lines)
                   if line.endswith(f"alice ({ids['alice']}): while you were away"))
    summary = lines.index("Offline messages: 1")
    assert lines[0] == f"Logged in as bob ({ids['bob']})." and message < summary
    # acknowledged by the first login, so never delivered again
    again = run_client(daemon.port, "login bob\n")
    assert again.returncode == 0, again.stdout
    assert "Offline messages: 0" in again.stdout
    assert "while you were away" not in again.stdout


def test_group_chat_shows_group_name(daemon: DaemonProcess) -> None:
    ids = register(daemon.port, "alice", "bob")
    with logged_in(daemon.port, "alice") as alice, logged_in(daemon.port, "bob") as bob:
        alice.send("creategroup devs the dev team")
        gid = int(alice.expect(r"^Created group devs \(g(\d+)\)")[1])
        bob.send(f"joingroup {gid}")
        bob.expect(rf"^Joined group devs \(g{gid}\), 2 members\.$")
        alice.expect(rf"\* bob \({ids['bob']}\) joined devs \(g{gid}\)\.$")
        alice.send(f"groupchat g{gid} hello devs")
        alice.expect(rf"^{TIME} \[devs g{gid}\] you: hello devs$")
        bob.expect(rf"^{TIME} \[devs g{gid}\] alice \({ids['alice']}\): hello devs$")
        bob.send(f"group {gid}")
        bob.expect(rf"^Group devs \(g{gid}\), created by alice \({ids['alice']}\): the dev team")
        bob.expect(rf"^  alice \({ids['alice']}\) creator, online$")
        bob.send(f"history g{gid}")
        bob.expect(rf"^{TIME} \[devs g{gid}\] alice \({ids['alice']}\): hello devs$")
        bob.send(f"leavegroup {gid}")
        bob.expect(rf"^Left devs \(g{gid}\)\.$")
        alice.expect(rf"\* bob \({ids['bob']}\) left devs \(g{gid}\)\.$")
        assert alice.finish() == 0, alice.transcript
        assert bob.finish() == 0, bob.transcript


def test_friend_request_flow(daemon: DaemonProcess) -> None:
    ids = register(daemon.port, "alice", "bob")
    a, b = ids["alice"], ids["bob"]
    with logged_in(daemon.port, "alice") as alice, logged_in(daemon.port, "bob") as bob:
        alice.send(f"addfriend {b}")
        alice.expect(rf"^Friend request sent to bob \({b}\)\.$")
        bob.expect(rf"\* alice \({a}\) wants to be your friend: type 'accept {a}'")
        bob.send("accept alice")
        bob.expect(rf"^alice \({a}\) is now your friend\.$")
        alice.expect(rf"\* bob \({b}\) is now your friend\.$")
        alice.send("friends")
        alice.expect(rf"^Friends: bob \({b}, online\)$")
        bob.send("friends")
        bob.expect(rf"^Friends: alice \({a}, online\)$")
        assert bob.finish() == 0, bob.transcript
        alice.expect(rf"\* bob \({b}\) is offline\.$")
        assert alice.finish() == 0, alice.transcript
    later = run_client(daemon.port, "login bob\n")
    assert f"Friends: alice ({a}, offline)" in later.stdout


def test_pending_request_in_login_summary(daemon: DaemonProcess) -> None:
    ids = register(daemon.port, "alice", "bob")
    assert run_client(daemon.port, f"login alice\naddfriend {ids['bob']}\n").returncode == 0
    done = run_client(daemon.port, "login bob\n")
    assert f"Friend requests: alice ({ids['alice']})" in done.stdout


def test_exit_status_is_1_when_a_command_fails(daemon: DaemonProcess) -> None:
    register(daemon.port, "alice")
    wrong = run_client(daemon.port, "login alice\n", password="not-the-password")
    assert wrong.returncode == 1, wrong.stdout
    assert "login failed: wrong user or password." in wrong.stdout
    assert "{" not in wrong.stdout  # a sentence, not JSON
    # later commands still run, and a usage error counts as a failure too
    mixed = run_client(daemon.port, "login alice\nchat\nwho\n")
    assert mixed.returncode == 1, mixed.stdout
    assert "usage: chat ID|NAME TEXT" in mixed.stdout
    assert "Online now (1)" in mixed.stdout
    ok = run_client(daemon.port, "login alice\nwho\n")
    assert ok.returncode == 0, ok.stdout


def test_without_password_login_fails_clearly(daemon: DaemonProcess) -> None:
    register(daemon.port, "alice")
    done = run_client(daemon.port, "login alice\n", password=None)
    assert done.returncode == 1
    assert "QQCHAT_PASSWORD" in done.stdout


def test_password_option(daemon: DaemonProcess) -> None:
    register(daemon.port, "alice")
    done = run_client(daemon.port, "login alice\n", "--password", PASSWORD, password=None)
    assert done.returncode == 0, done.stdout


def test_raw_prints_json_lines(daemon: DaemonProcess) -> None:
    register(daemon.port, "alice")
    done = run_client(daemon.port, "login alice\nwho\n", "--raw")
    assert done.returncode == 0, done.stdout
    received = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    sent = [json.loads(line[2:]) for line in done.stdout.splitlines() if line.startswith("> ")]
    assert [f["type"] for f in received] == ["login", "synced", "who", "logout"]
    assert sent[0] == {"type": "login", "name": "alice", "password": "***", "req": 1}
    assert PASSWORD not in done.stdout


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_lost_connection_is_reported(tmp_path: Path, how: str) -> None:
    with DaemonProcess(tmp_path) as daemon:
        register(daemon.port, "alice")
        client = logged_in(daemon.port, "alice")
        with client:
            if how == "killed":
                daemon.kill()
            else:
                daemon.stop()
                client.expect(r"\* The server is shutting down\.$")
            client.expect(rf"^Connection to 127\.0\.0\.1:{daemon.port} lost")
            assert client.wait() == 1


def test_second_login_kicks_the_first(daemon: DaemonProcess) -> None:
    register(daemon.port, "alice")
    with logged_in(daemon.port, "alice") as first:
        second = run_client(daemon.port, "login alice\n")
        assert second.returncode == 0, second.stdout
        first.expect(r"\* You were logged out: logged in from another place\.$")
        assert first.wait() == 1
