"""Databases made by earlier versions (their schemas kept in tests/data) start under this
one: names become searchable, the conversation list is derived from the log, old
column types are converted, and nothing already stored is lost. On SQLite and MariaDB.

The versions: 4b9d23c, the first schema (``messages.cid`` a ``VARCHAR(64)`` on
MariaDB, no staging table on SQLite); b7580a2, before names were folded; eacf3d2, the
last schema before versioned migrations (every column and table of the baseline)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from chatclient import ChatClient, connect
from conftest import start_daemon
from mariadb_server import MariaDB
from twisted.internet import defer

from qqchat.app import Settings
from qqchat.passwords import hash_password

DATA = Path(__file__).parent / "data"
OLDEST, FOLDED_BEFORE, UNVERSIONED = "4b9d23c", "b7580a2", "eacf3d2"
VERSIONS = [OLDEST, FOLDED_BEFORE, UNVERSIONED]


def old_statements(version: str, dialect: str) -> list[str]:
    """The schema file of ``version``, split as that version split it."""
    text = (DATA / f"schema_{version}_{dialect}.sql").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def seed(cursor: Any, p: str, version: str, sqlite: bool) -> None:
    """Three users (two whose names differ only in case, as versions before R7 allowed),
    a group, and a log as the old version wrote it: 1-2 one-to-one, 3 in the group, 4 a
    broadcast (on SQLite, 4 still staged, as a stop leaves it, where the version
    staged), 5 bob's with the client id "x". On the last unversioned schema, what that
    version derived is written too, as it wrote it."""
    pw = hash_password("password1", 4)
    if version == UNVERSIONED:  # its unique index needs the folded names
        cursor.execute(f"INSERT INTO users (id, name, pw_hash, created_at, acked, name_key, "
                       f"last_login) VALUES (1, 'Alice', {p}, 1, 0, 'alice', 5), "
                       f"(2, 'bob', {p}, 1, 1, 'bob', 5), (3, 'ALICE', {p}, 1, 4, 'alice#3', 5)",
                       (pw, pw, pw))
    else:
        cursor.execute(f"INSERT INTO users (id, name, pw_hash, created_at, acked) VALUES "
                       f"(1, 'Alice', {p}, 1, 0), (2, 'bob', {p}, 1, 1), "
                       f"(3, 'ALICE', {p}, 1, 4)", (pw, pw, pw))
    cursor.execute("INSERT INTO chat_groups (id, name, descr, creator, created_at) "
                   "VALUES (1, 'Devs', '', 1, 1)")
    cursor.execute("INSERT INTO group_members (group_id, user_id, role, since_id, joined_at) "
                   "VALUES (1, 1, 'creator', 0, 1), (1, 2, 'member', 0, 1)")
    rows = [(1, 1, 1, 2, None, "hello bob", 10, None), (2, 1, 2, 1, None, "hi alice", 11, None),
            (3, 2, 2, None, 1, "to the group", 12, None), (4, 3, 1, None, None, "to all", 13, None),
            (5, 1, 2, 2, None, "note to self", 14, "x")]
    staged = sqlite and version != OLDEST
    for row in rows:
        table = "messages_recent" if staged and row[0] == 4 else "messages"
        cursor.execute(f"INSERT INTO {table} (id, kind, sender, recipient, group_id, body, ts, "
                       f"cid) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})", row)
    cursor.execute("UPDATE log_seq SET last_id = 5 WHERE id = 1")
    if version == UNVERSIONED:
        cursor.execute("UPDATE chat_groups SET name_key = 'devs', last_id = 3")
        cursor.execute("INSERT INTO conversations (user_id, peer_id, last_id) VALUES "
                       "(1, 2, 2), (2, 1, 2), (2, 2, 5)")


def create_old(version: str, dialect: str, cursor: Any) -> None:
    for stmt in old_statements(version, dialect):
        cursor.execute(stmt)
    seed(cursor, "?" if dialect == "sqlite" else "%s", version, dialect == "sqlite")


@pytest.fixture(params=["sqlite", "mysql"])
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=VERSIONS)
def old_database(request: pytest.FixtureRequest, tmp_path: Path, dialect: str) -> Any:
    version = str(request.param)
    if dialect == "sqlite":
        path = tmp_path / "old.db"
        with closing(sqlite3.connect(path)) as conn:
            create_old(version, "sqlite", conn.cursor())
            conn.commit()
        yield f"sqlite:///{path}"
        return
    server: MariaDB = request.getfixturevalue("mariadb")
    name = f"qq_upgrade_{version}"
    server.create_database(name)
    conn = server.connect(name)
    try:
        create_old(version, "mysql", conn.cursor())
        conn.commit()
    finally:
        conn.close()
    yield server.url(name)
    server.drop_database(name)


async def _login(port: int, name: str) -> tuple[ChatClient, dict[str, Any], list[Any]]:
    c = await connect(port)
    reply, backlog = await c.login(name, "password1")
    return c, reply, backlog


def _settings(url: str) -> Settings:
    return Settings(listen="tcp:0:interface=127.0.0.1", db=url, hash_cost=4, rate_limit=0)


@pytest_twisted.ensureDeferred
async def test_an_older_database_upgrades_without_loss(old_database: str) -> None:
    from twisted.internet import reactor

    daemon, port = await start_daemon(_settings(old_database))
    clients: list[ChatClient] = []
    try:
        alice, _, backlog = await _login(port, "Alice")
        clients.append(alice)
        # everything the old version stored for her is still owed to her, in order
        assert [(m["id"], m["text"]) for m in backlog] == [(2, "hi alice"),
                                                            (3, "to the group")]
        found = await alice.ok("user_search", query="B")
        assert [u["name"] for u in found["users"]] == ["bob"]
        # look-alike accounts of old both stay, each with its own name, and block a third
        both = await alice.ok("user_search", query="alice")
        assert [u["name"] for u in both["users"]] == ["Alice", "ALICE"]
        twin, twin_reply, _ = await _login(port, "ALICE")
        clients.append(twin)
        assert twin_reply["user"]["id"] == 3
        assert (await twin.call("register", name="alice", password="password1"))["code"] \
            == "name_taken"
        groups = await alice.ok("group_search", query="dev")
        assert [g["name"] for g in groups["groups"]] == ["Devs"]
        page = await alice.ok("conversations")
        assert [(c["kind"], c["name"], c["last"]["text"], c["unread"])
                for c in page["conversations"]] == [("group", "Devs", "to the group", 1),
                                                     ("direct", "bob", "hi alice", 1)]
        # new messages keep the derived list current
        bob, _, _ = await _login(port, "bob")
        clients.append(bob)
        sent = await bob.ok("chat", to=1, text="after the upgrade")
        await alice.push("message")
        first = (await alice.ok("conversations"))["conversations"][0]
        assert (first["name"], first["last"]["id"]) == ("bob", sent["id"])
    finally:
        for c in clients:
            c.close()
        await defer.maybeDeferred(daemon.stopService).addTimeout(20, reactor)


@pytest.mark.parametrize("old_database", [OLDEST], indirect=True)
@pytest_twisted.ensureDeferred
async def test_client_ids_stay_exact_after_an_upgrade_from_the_first_schema(
        old_database: str) -> None:
    """The first MariaDB schema stored ``cid`` as ``VARCHAR(64)`` under a PAD SPACE
    collation, where "x" and "x " are one key; ``CREATE TABLE IF NOT EXISTS`` never
    changed it. Upgraded, a send whose cid differs from a stored one only by a trailing
    space is a new message (not a duplicate-key error failing its whole commit batch,
    a concurrent send of another user included), and a retry of the stored one is still
    answered with the stored message."""
    from twisted.internet import reactor

    daemon, port = await start_daemon(_settings(old_database))
    clients: list[ChatClient] = []
    try:
        alice, _, _ = await _login(port, "Alice")
        bob, _, _ = await _login(port, "bob")
        clients += [alice, bob]
        spaced, other = await defer.gatherResults([
            defer.Deferred.fromCoroutine(bob.call("chat", to=2, text="spaced", cid="x ")),
            defer.Deferred.fromCoroutine(alice.call("chat", to=2, text="meanwhile"))])
        assert spaced.get("type") == "chat", spaced
        assert other.get("type") == "chat", other
        assert spaced["id"] > 5 and other["id"] > 5 and spaced["id"] != other["id"]
        retry = await bob.ok("chat", to=2, text="note to self", cid="x")
        assert retry["id"] == 5  # the stored message, not a second one
        again = await bob.ok("chat", to=2, text="spaced", cid="x ")
        assert again["id"] == spaced["id"]
        again_bob, _, backlog = await _login(port, "bob")
        clients.append(again_bob)
        texts = [m["text"] for m in backlog]
        assert texts.count("spaced") == 1 and "meanwhile" in texts
    finally:
        for c in clients:
            c.close()
        await defer.maybeDeferred(daemon.stopService).addTimeout(20, reactor)
