"""A database made by an earlier version (its schema kept in tests/data) starts under
this one: names become searchable, the conversation list is derived from the log,
and nothing already stored is lost. On SQLite and MariaDB."""

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
OLD = "b7580a2"  # the version whose schema the files hold


def _statements(dialect: str) -> list[str]:
    text = (DATA / f"schema_{OLD}_{dialect}.sql").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _seed(cursor: Any, p: str, staged: bool) -> None:
    """Three users (two whose names differ only in case, as the old version allowed), a
    group, and a log as the old version wrote it: 1-2 one-to-one, 3 in the group, 4 a
    broadcast (on SQLite, 4 still staged, as a stop leaves it)."""
    pw = hash_password("password1", 4)
    cursor.execute(f"INSERT INTO users (id, name, pw_hash, created_at, acked) VALUES "
                   f"(1, 'Alice', {p}, 1, 0), (2, 'bob', {p}, 1, 1), (3, 'ALICE', {p}, 1, 4)",
                   (pw, pw, pw))
    cursor.execute("INSERT INTO chat_groups (id, name, descr, creator, created_at) "
                   "VALUES (1, 'Devs', '', 1, 1)")
    cursor.execute("INSERT INTO group_members (group_id, user_id, role, since_id, joined_at) "
                   "VALUES (1, 1, 'creator', 0, 1), (1, 2, 'member', 0, 1)")
    rows = [(1, 1, 1, 2, None, "hello bob", 10), (2, 1, 2, 1, None, "hi alice", 11),
            (3, 2, 2, None, 1, "to the group", 12), (4, 3, 1, None, None, "to all", 13)]
    for row in rows:
        table = "messages_recent" if staged and row[0] == 4 else "messages"
        cursor.execute(f"INSERT INTO {table} (id, kind, sender, recipient, group_id, body, ts)"
                       f" VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})", row)
    cursor.execute("UPDATE log_seq SET last_id = 4 WHERE id = 1")


@pytest.fixture(params=["sqlite", "mysql"])
def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        path = tmp_path / "old.db"
        with closing(sqlite3.connect(path)) as conn:
            for stmt in _statements("sqlite"):
                conn.execute(stmt)
            _seed(conn.cursor(), "?", staged=True)
            conn.commit()
        yield f"sqlite:///{path}"
        return
    server: MariaDB = request.getfixturevalue("mariadb")
    name = "qq_upgrade"
    server.create_database(name)
    conn = server.connect(name)
    try:
        cursor = conn.cursor()
        for stmt in _statements("mysql"):
            cursor.execute(stmt)
        _seed(cursor, "%s", staged=False)
        conn.commit()
    finally:
        conn.close()
    yield server.url(name)
    server.drop_database(name)


async def _login(port: int, name: str) -> tuple[ChatClient, dict[str, Any], list[Any]]:
    c = await connect(port)
    reply, backlog = await c.login(name, "password1")
    return c, reply, backlog


@pytest_twisted.ensureDeferred
async def test_an_older_database_upgrades_without_loss(old_database: str) -> None:
    from twisted.internet import reactor

    settings = Settings(listen="tcp:0:interface=127.0.0.1", db=old_database, hash_cost=4,
                        rate_limit=0)
    daemon, port = await start_daemon(settings)
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
