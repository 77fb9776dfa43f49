"""The console client as a user runs it: a real process, piped stdin, a real daemon.

These tests block on pipes, so the daemon is a separate process too
(``DaemonProcess``); nothing here uses the test's reactor.
"""

from __future__ import annotations

import json
import re
import stat
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


# -- K3: finding people and groups by name, conversations, saved sessions, passwd -----------


def test_search_and_chat_with_a_user_never_seen(daemon: DaemonProcess) -> None:
    ids = register(daemon.port, "alice", "Alan", "bob")
    a, al, b = ids["alice"], ids["Alan"], ids["bob"]
    # bob has never seen alice: the name is looked up on the server, offline or not
    done = run_client(daemon.port, "login bob\nsearch al\nchat alice hello alice\n"
                                   "addfriend ALAN\n")
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    found = lines.index("Users whose name starts with 'al':")
    assert sorted(lines[found + 1:found + 3]) == sorted([f"  alice ({a})", f"  Alan ({al})"])
    assert re.search(rf"^{TIME} you -> alice \({a}\): hello alice$", done.stdout, re.M)
    assert f"Friend request sent to Alan ({al})." in lines
    later = run_client(daemon.port, "login alice\n")
    assert re.search(rf"^{TIME} bob \({b}\): hello alice$", later.stdout, re.M), later.stdout
    # the friend shows up as such in a search
    with logged_in(daemon.port, "Alan") as alan:
        alan.send(f"accept {b}")
        alan.expect(rf"^bob \({b}\) is now your friend\.$")
        alan.send("search b")
        alan.expect(rf"^  bob \({b}\), friend, offline$")
        assert alan.finish() == 0, alan.transcript


def test_an_ambiguous_name_fails_a_script_and_sends_nothing(daemon: DaemonProcess) -> None:
    ids = register(daemon.port, "alice", "alan", "bob")
    done = run_client(daemon.port, "login bob\nchat al hi\nchat zed hi\n")
    assert done.returncode == 1, done.stdout
    assert (f"chat failed: 'al' matches several users: alan ({ids['alan']}), "
            f"alice ({ids['alice']}); give the id or the whole name.") in done.stdout
    assert "chat failed: no user is called 'zed', nor has a name starting with it." \
        in done.stdout
    assert "you ->" not in done.stdout
    later = run_client(daemon.port, "login alice\n")
    assert "Offline messages: 0" in later.stdout


def test_findgroup_by_name_and_id(daemon: DaemonProcess) -> None:
    register(daemon.port, "alice", "bob")
    made = run_client(daemon.port, "login alice\ncreategroup devs our team\n")
    gid = int(re.search(r"Created group devs \(g(\d+)\)", made.stdout)[1])  # type: ignore[index]
    done = run_client(daemon.port, f"login bob\nfindgroup DE\nfindgroup g{gid}\n"
                                   f"joingroup {gid}\nfindgroup devs\n")
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert lines.count("Groups matching 'DE':") == 1
    assert lines.count(f"  devs (g{gid}), 1 member, join with: joingroup {gid}: our team") == 2
    assert f"  devs (g{gid}), 2 members, you are a member: our team" in lines


def test_chats_lists_conversations_newest_first(daemon: DaemonProcess) -> None:
    ids = register(daemon.port, "alice", "bob", "carol")
    a, c = ids["alice"], ids["carol"]
    made = run_client(daemon.port, f"login alice\nchat {ids['bob']} lunch?\n"
                                   "creategroup devs\n")
    gid = int(re.search(r"Created group devs \(g(\d+)\)", made.stdout)[1])  # type: ignore[index]
    assert run_client(daemon.port, f"login carol\nchat {a} hi alice\n").returncode == 0
    assert run_client(daemon.port, f"login alice\ngroupchat {gid} hello\n"
                                   "chat carol on my way\n").returncode == 0
    done = run_client(daemon.port, "login alice\nchats\n")
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    top = lines.index("Chats, newest first:")
    assert [re.sub(TIME, "[t]", line) for line in lines[top + 1:top + 4]] == [
        f"  [t] carol ({c}): you: on my way",
        f"  [t] devs (g{gid}): you: hello",
        f"  [t] bob ({ids['bob']}): you: lunch?",
    ]
    # bob's message from alice came in his backlog: shown, acknowledged, so not unread
    bob = run_client(daemon.port, "login bob\nchats\n")
    assert f"  carol ({c})" not in bob.stdout
    assert re.search(rf"^  {TIME} alice \({a}\): lunch\?$", bob.stdout, re.M), bob.stdout


def test_login_remember_then_login_without_password(daemon: DaemonProcess,
                                                    tmp_path: Path) -> None:
    ids = register(daemon.port, "alice", "bob")
    config = tmp_path / "config"
    first = run_client(daemon.port, "login --remember alice\n", config=config)
    assert first.returncode == 0, first.stdout
    store = config / "qqchat" / "tokens.json"
    assert f"Session saved in {store}" in first.stdout
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    saved = json.loads(store.read_text())["servers"][f"127.0.0.1:{daemon.port}"]["alice"]
    assert saved["id"] == ids["alice"] and len(saved["token"]) >= 22
    assert saved["token"] not in first.stdout
    # no password anywhere: the saved session logs in, and survives quitting
    for _ in range(2):
        again = run_client(daemon.port, f"login alice\nchat {ids['bob']} hi\n",
                           password=None, config=config)
        assert again.returncode == 0, again.stdout
        assert f"Logged in as alice ({ids['alice']})." in again.stdout
    # logout ends it: the token is revoked and deleted, a password is needed again
    out = run_client(daemon.port, "login alice\nlogout\n", password=None, config=config)
    assert out.returncode == 0, out.stdout
    assert "alice" not in json.loads(store.read_text())["servers"].get(
        f"127.0.0.1:{daemon.port}", {})
    gone = run_client(daemon.port, "login alice\n", password=None, config=config)
    assert gone.returncode == 1 and "QQCHAT_PASSWORD" in gone.stdout, gone.stdout
    # a token the server does not know: deleted, and the password used instead
    first = run_client(daemon.port, "login alice --remember\n", config=config)
    assert first.returncode == 0, first.stdout
    token = json.loads(store.read_text())["servers"][f"127.0.0.1:{daemon.port}"]["alice"]
    store.write_text(store.read_text().replace(token["token"], "x" * 43))
    fallback = run_client(daemon.port, "login alice\n", config=config)
    assert fallback.returncode == 0, fallback.stdout
    assert "The saved session for alice has ended" in fallback.stdout
    assert f"Logged in as alice ({ids['alice']})." in fallback.stdout
    assert "alice" not in json.loads(store.read_text())["servers"].get(
        f"127.0.0.1:{daemon.port}", {})


def test_passwd_changes_the_password_and_ends_other_saved_sessions(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    register(daemon.port, "alice")
    laptop, phone = tmp_path / "laptop", tmp_path / "phone"
    for config in (laptop, phone):
        assert run_client(daemon.port, "login --remember alice\n",
                          config=config).returncode == 0
    laptop_store = laptop / "qqchat" / "tokens.json"
    before = laptop_store.read_text()
    done = run_client(daemon.port, "login alice\npasswd\n", password=None, config=laptop,
                      env={"QQCHAT_PASSWORD": PASSWORD, "QQCHAT_NEW_PASSWORD": "brand-new-pw"})
    assert done.returncode == 0, done.stdout
    assert "Password changed" in done.stdout
    after = laptop_store.read_text()
    assert after != before  # this session's new token replaced the old one
    assert run_client(daemon.port, "login alice\n", password=None,
                      config=laptop).returncode == 0
    # the phone's token was revoked: it falls back to the password, the new one only
    old = run_client(daemon.port, "login alice\n", config=phone)
    assert old.returncode == 1 and "wrong user or password" in old.stdout, old.stdout
    assert "The saved session for alice has ended" in old.stdout
    new = run_client(daemon.port, "login alice\n", password="brand-new-pw", config=phone)
    assert new.returncode == 0, new.stdout


def test_passwd_failures(daemon: DaemonProcess) -> None:
    register(daemon.port, "alice")
    weak = run_client(daemon.port, "login alice\npasswd\n", env={"QQCHAT_NEW_PASSWORD": "x"})
    assert weak.returncode == 1
    assert re.search(r"^passwd failed: .*password", weak.stdout, re.M), weak.stdout
    unasked = run_client(daemon.port, "login alice\npasswd\n")
    assert unasked.returncode == 1 and "QQCHAT_NEW_PASSWORD" in unasked.stdout
    anonymous = run_client(daemon.port, "passwd\n")
    assert anonymous.returncode == 1 and "passwd failed: log in first." in anonymous.stdout
    # nothing changed
    assert run_client(daemon.port, "login alice\n").returncode == 0
