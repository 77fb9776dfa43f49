"""Versioned schema migrations (R10), on SQLite and a real MariaDB: each applied once,
in order, and recorded; every earlier schema brought to the same schema as a new
database, without loss; a run that is cut short, or several at once, end the same;
a database newer than the code refused, by the daemon and by ``qqchat-admin``."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from daemon_process import free_port
from mariadb_server import MariaDB
from test_admin import admin, ok, refused
from test_e2e_upgrade import VERSIONS, create_old
from twisted.internet import defer, task

from qqchat.app import Settings, build
from qqchat.storage.migrations import status
from qqchat.storage.pool import parse_database_url
from qqchat.storage.schema import (
    LOCK_NAME,
    SchemaTooNewError,
    apply_schema,
    latest,
    migrations,
)

BIN = Path(sys.executable).parent


@contextmanager
def connection(url: str) -> Iterator[Any]:
    config = parse_database_url(url)
    if config.dialect == "sqlite":
        conn: Any = sqlite3.connect(config.path)
    else:
        import MySQLdb

        conn = MySQLdb.connect(host=config.host, port=config.port, user=config.user,
                               passwd=config.password, db=config.database, charset="utf8mb4")
    try:
        yield conn
    finally:
        conn.close()


def run(url: str, fn: Callable[[Any], Any]) -> Any:
    """``fn(cursor)`` in one transaction, committed."""
    with connection(url) as conn:
        cursor = conn.cursor()
        result = fn(cursor)
        conn.commit()
        return result


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes | bytearray) else value


def schema_of(url: str) -> dict[str, Any]:
    """Tables, columns (type, null, default) and indexes (unique, columns, condition),
    in a form two databases of one dialect can be compared by."""
    dialect = parse_database_url(url).dialect

    def sqlite_schema(t: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        t.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"
                  " WHERE name NOT LIKE 'sqlite_%' ORDER BY name")
        objects = t.fetchall()
        for kind, name, table, sql in objects:
            if kind == "table":
                t.execute(f"PRAGMA table_info({name})")
                out[f"table {name}"] = sorted((c[1], c[2].upper(), c[3], c[4], c[5])
                                              for c in t.fetchall())
                t.execute(f"PRAGMA index_list({name})")
                for _, index, unique, origin, partial in t.fetchall():
                    t.execute(f"PRAGMA index_info({index})")
                    columns = [c[2] for c in t.fetchall()]
                    where = ""
                    if partial:
                        where = re.sub(r"\s+", " ", next(
                            s for k, n, _, s in objects if n == index).split(" WHERE ")[1])
                    key = index if origin == "c" else f"{origin} {columns}"
                    out[f"index {table}.{key}"] = (unique, columns, where)
            elif kind == "view":
                out[f"view {name}"] = re.sub(r"\s+", " ", sql)
        return out

    def mysql_schema(t: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        t.execute("SELECT table_name, column_name, column_type, is_nullable, column_default,"
                  " collation_name FROM information_schema.columns"
                  " WHERE table_schema = DATABASE()")
        for table, *column in t.fetchall():
            out.setdefault(f"table {_text(table)}", []).append(tuple(map(_text, column)))
        t.execute("SELECT table_name, index_name, non_unique, column_name"
                  " FROM information_schema.statistics WHERE table_schema = DATABASE()"
                  " ORDER BY table_name, index_name, seq_in_index")
        for table, index, non_unique, column in t.fetchall():
            entry = out.setdefault(f"index {_text(table)}.{_text(index)}",
                                   [int(non_unique), []])
            entry[1].append(_text(column))
        return {k: sorted(v) if k.startswith("table") else v for k, v in out.items()}

    return run(url, sqlite_schema if dialect == "sqlite" else mysql_schema)


def log_rows(url: str, tables: list[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``tables`` (the message log as one, staged rows included), values as
    text, so a column converted from VARCHAR to VARBINARY compares equal."""
    def read(t: Any) -> dict[str, list[tuple[Any, ...]]]:
        out: dict[str, list[tuple[Any, ...]]] = {}
        for table in tables:
            t.execute(f"SELECT * FROM {table}")
            names = [d[0] for d in t.description]
            rows = [tuple(sorted(zip(names, map(_text, r), strict=True))) for r in t.fetchall()]
            key = "messages" if table == "messages_recent" else table
            out[key] = sorted(out.get(key, []) + rows, key=repr)
        return out

    return run(url, read)


def versions(url: str) -> list[int]:
    return [a.version for a in status(parse_database_url(url), apply=False).history]


def known(url: str) -> list[int]:
    return [m.version for m in migrations(parse_database_url(url).dialect)]


# -- the migrations themselves ------------------------------------------------

def test_both_dialects_have_the_same_migrations_numbered_without_a_gap() -> None:
    sqlite, mysql = migrations("sqlite"), migrations("mysql")
    assert [m.label for m in sqlite] == [m.label for m in mysql]
    assert [m.version for m in sqlite] == list(range(1, len(sqlite) + 1))
    assert sqlite[0].label == "0001_baseline" and len(sqlite) >= 2
    for m in (*sqlite, *mysql):
        assert m.statements, m.label


def test_a_new_database_gets_every_migration_once(db_url: str) -> None:
    config = parse_database_url(db_url)
    first = status(config, apply=True)
    assert [m.version for m in first.applied_now] == known(db_url)
    assert [a.version for a in first.history] == known(db_url)
    assert first.version == latest(config.dialect).version and not first.pending
    schema = schema_of(db_url)
    again = status(config, apply=True)
    assert again.applied_now == [] and again.history == first.history
    assert schema_of(db_url) == schema


def test_every_migration_can_run_again(db_url: str) -> None:
    """MariaDB commits each DDL statement on its own: a run cut short (the process
    killed, the connection lost) is run again from the last version recorded, over
    statements already done. Forgetting every version makes each run again."""
    status(parse_database_url(db_url), apply=True)
    schema = schema_of(db_url)
    run(db_url, lambda t: t.execute("DELETE FROM schema_version"))
    again = status(parse_database_url(db_url), apply=True)
    assert [m.version for m in again.applied_now] == known(db_url)
    assert schema_of(db_url) == schema


@contextmanager
def database(request: pytest.FixtureRequest, tmp_path: Path, dialect: str, name: str,
             version: str | None = None) -> Iterator[str]:
    """A database of its own: empty, or made and filled by an earlier ``version``."""
    server: MariaDB | None = None
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path}/{name}.db"
    else:
        server = request.getfixturevalue("mariadb")
        server.create_database(name)
        url = server.url(name)
    try:
        if version is not None:
            run(url, lambda t: create_old(version, dialect, t))
        yield url
    finally:
        if server is not None:
            server.drop_database(name)


@pytest.fixture(params=["sqlite", "mysql"])
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path, dialect: str) -> Iterator[str]:
    if dialect == "sqlite":
        yield f"sqlite:///{tmp_path}/fresh.db"
        return
    server: MariaDB = request.getfixturevalue("mariadb")
    server.create_database("qq_fresh")
    yield server.url("qq_fresh")
    server.drop_database("qq_fresh")


@pytest.mark.parametrize("version", VERSIONS)
def test_an_earlier_schema_becomes_a_new_databases_without_loss(
        request: pytest.FixtureRequest, tmp_path: Path, dialect: str, fresh_url: str,
        version: str) -> None:
    """Column types, columns, tables and indexes: the upgraded database's schema is the
    one a new database gets (on MariaDB the first schema's ``messages.cid`` becomes
    ``VARBINARY(256)``), and every row stored before is there after, unchanged."""
    status(parse_database_url(fresh_url), apply=True)
    with database(request, tmp_path, dialect, f"qq_old_{version}", version) as url:
        tables = run(url, lambda t: _tables(t, dialect))
        before = log_rows(url, tables)
        applied = status(parse_database_url(url), apply=True).applied_now
        assert [m.version for m in applied] == known(url)
        assert schema_of(url) == schema_of(fresh_url)
        after = log_rows(url, tables)
        for table, rows in before.items():
            # columns added since are filled from the others; the old ones are unchanged
            kept = [tuple(c for c in r if c[0] in dict(rows[0])) for r in after[table]] \
                if rows else after[table]
            assert kept == rows, table


def _tables(t: Any, dialect: str) -> list[str]:
    if dialect == "sqlite":
        t.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                  " AND name NOT LIKE 'sqlite_%'")
    else:
        t.execute("SELECT table_name FROM information_schema.tables"
                  " WHERE table_schema = DATABASE()")
    return sorted(_text(r[0]) for r in t.fetchall())


def test_the_first_mariadb_schemas_cid_column_is_converted(mariadb: MariaDB) -> None:
    """What made a trailing-space cid a duplicate-key error (test_e2e_upgrade shows the
    client's side): the first schema's column, compared with PAD SPACE."""
    mariadb.create_database("qq_cid")
    url = mariadb.url("qq_cid")
    try:
        run(url, lambda t: create_old("4b9d23c", "mysql", t))
        column = ("SELECT column_type, collation_name FROM information_schema.columns WHERE"
                  " table_schema = DATABASE() AND table_name = 'messages'"
                  " AND column_name = 'cid'")

        def fetch(t: Any) -> Any:
            t.execute(column)
            return tuple(map(_text, t.fetchone()))

        assert run(url, fetch) == ("varchar(64)", "utf8mb4_bin")
        status(parse_database_url(url), apply=True)
        assert run(url, fetch) == ("varbinary(256)", None)

        def insert_spaced(t: Any) -> Any:
            t.execute("INSERT INTO messages (id, kind, sender, recipient, body, ts, cid)"
                      " VALUES (6, 1, 2, 2, 'spaced', 15, 'x ')")
            t.execute("SELECT id, cid FROM messages WHERE sender = 2 AND cid IS NOT NULL"
                      " ORDER BY id")
            return [(i, _text(c)) for i, c in t.fetchall()]

        assert run(url, insert_spaced) == [(5, "x"), (6, "x ")]
    finally:
        mariadb.drop_database("qq_cid")


# -- several at once ----------------------------------------------------------

@pytest.mark.parametrize("start", ["new", "4b9d23c"])
def test_daemons_starting_at_once_migrate_once(
        request: pytest.FixtureRequest, tmp_path: Path, dialect: str, start: str) -> None:
    """Four processes' connections migrate one database at the same moment: each
    migration is applied by one of them and recorded once, and all four succeed."""
    with database(request, tmp_path, dialect, "qq_race",
                  None if start == "new" else start) as url:
        if dialect == "sqlite":  # the file there, as a daemon's pool creates it
            sqlite3.connect(parse_database_url(url).path).close()
        config = parse_database_url(url)
        barrier = threading.Barrier(4)
        results: list[Any] = []

        def migrate() -> None:
            barrier.wait()
            try:
                results.append(status(config, apply=True))
            except BaseException as e:  # reported below
                results.append(e)

        threads = [threading.Thread(target=migrate) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        assert not [r for r in results if isinstance(r, BaseException)], results
        assert len(results) == 4
        applied = sorted(m.version for r in results for m in r.applied_now)
        assert applied == known(url)
        assert versions(url) == known(url)


# -- a database newer than the code ---------------------------------------------

def _make_newer(url: str) -> int:
    status(parse_database_url(url), apply=True)
    future = latest(parse_database_url(url).dialect).version + 1
    p = "?" if url.startswith("sqlite") else "%s"
    run(url, lambda t: t.execute(f"INSERT INTO schema_version (version, name, applied_at)"
                                 f" VALUES ({p}, 'from_the_future', 1)", (future,)))
    return future


def test_a_newer_database_is_refused_and_left_alone(db_url: str) -> None:
    future = _make_newer(db_url)
    schema = schema_of(db_url)
    dialect = parse_database_url(db_url).dialect
    with connection(db_url) as conn, pytest.raises(SchemaTooNewError) as caught:
        apply_schema(conn.cursor(), dialect)
    message = str(caught.value)
    assert f"schema is at version {future} ({future:04d}_from_the_future)" in message
    assert f"knows (version {future - 1}, {latest(dialect).label})" in message
    assert "a newer qqchat upgraded it" in message
    # the admin command: refused, status 1, that message on one line, nothing changed
    assert "newer than this qqchat" in refused(db_url, 1, "migrate")
    assert "newer than this qqchat" in refused(db_url, 1, "list")
    shown = admin(db_url, "migrate", "--status")
    assert shown.returncode == 1 and f"schema version {future}" in shown.stdout, shown
    assert schema_of(db_url) == schema and versions(db_url)[-1] == future


def test_the_daemon_refuses_a_newer_database_at_once(db_url: str, tmp_path: Path) -> None:
    """Exits non-zero with the reason in one line and no traceback, without waiting
    out --db-wait: retrying would not make the database older."""
    future = _make_newer(db_url)
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "twistd"), "-n", "--pidfile=", "qqchat", "--port", str(free_port()),
         "--interface", "127.0.0.1", "--db", db_url, "--db-wait", "60"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert time.monotonic() - started < 30, out
    assert f"qqchat could not start: the database schema is at version {future}" in out, out
    assert "Traceback" not in out, out
    assert versions(db_url)[-1] == future


# -- qqchat-admin migrate -------------------------------------------------------

def test_admin_migrate_says_what_it_applied_and_status_what_it_would(db_url: str) -> None:
    if db_url.startswith("sqlite"):
        assert "no database at" in refused(db_url, 3, "migrate", "--status")
    else:
        assert "schema version 0 (none)" in ok(db_url, "migrate", "--status")
    labels = [m.label for m in migrations(parse_database_url(db_url).dialect)]
    first = ok(db_url, "migrate")
    assert f"Applied {', '.join(labels)} to " in first
    assert f"Schema up to date in {parse_database_url(db_url).describe()}: version " \
           f"{len(labels)} ({labels[-1]})." in first
    again = ok(db_url, "migrate")
    assert "Applied" not in again and "Schema up to date" in again
    shown = ok(db_url, "migrate", "--status")
    assert [ln.split()[0] for ln in shown.splitlines()[1:]] == labels
    assert "To apply" not in shown
    # forget the last one: --status names it, and changes nothing
    run(db_url, lambda t: t.execute(f"DELETE FROM schema_version WHERE version = {len(labels)}"))
    shown = ok(db_url, "migrate", "--status")
    assert shown.splitlines()[-1] == \
        f"To apply (qqchat-admin migrate, or a daemon's start): {labels[-1]}"
    assert versions(db_url) == list(range(1, len(labels)))


# -- migration 2: the group unread count from the index alone -------------------

#: the group part of the conversation list's unread counts (storage/directory.py)
UNREAD_GROUP = ("SELECT 0, COUNT(*) FROM (SELECT 1 FROM messages"
                " WHERE kind = 2 AND group_id = ? AND id > ? AND sender <> ? LIMIT 1000) g0")


def test_the_group_unread_count_reads_the_index_alone(db_url: str) -> None:
    status(parse_database_url(db_url), apply=True)
    mysql = db_url.startswith("mysql")
    q = UNREAD_GROUP.replace("?", "%s") if mysql else UNREAD_GROUP

    def explain(t: Any) -> list[Any]:
        rows = [(i, 1 + i % 3, i % 7, i % 5 + 1, f"m{i}", i) for i in range(1, 301)]
        t.executemany(("INSERT INTO messages (id, kind, sender, group_id, body, ts) VALUES "
                       + ("(%s, %s, %s, %s, %s, %s)" if mysql else "(?, ?, ?, ?, ?, ?)")),
                      rows)
        t.execute(("EXPLAIN " if mysql else "EXPLAIN QUERY PLAN ") + q, (1, 10, 3))
        return [tuple(map(_text, r)) for r in t.fetchall()]

    plan = run(db_url, explain)
    if mysql:
        used = [r for r in plan if r[2] == "messages"]
        assert [(r[5], r[-1]) for r in used] == [("messages_group_unread",
                                                  "Using where; Using index")], plan
    else:
        assert any("USING COVERING INDEX messages_group_unread" in str(r[-1])
                   for r in plan), plan


# -- migration 6: others' broadcasts without messages_kind ----------------------

#: the broadcast part of a login's backlog (storage/log.py, LogStore._UNDELIVERED)
BROADCASTS = ("SELECT id FROM messages WHERE group_id IS NULL AND kind = 3 AND id > ?"
              " AND sender <> ? ORDER BY id LIMIT ?")


def test_others_broadcasts_are_an_index_range(db_url: str) -> None:
    """MariaDB reads them off messages_group_unread once messages_kind is gone; SQLite
    off its partial index of broadcasts."""
    status(parse_database_url(db_url), apply=True)
    mysql = db_url.startswith("mysql")
    q = BROADCASTS.replace("?", "%s") if mysql else BROADCASTS

    def explain(t: Any) -> tuple[list[Any], list[Any]]:
        rows = [(i, 1 + i % 3, i % 7, (i % 5 + 1) if i % 3 == 1 else None, f"m{i}", i)
                for i in range(1, 301)]
        t.executemany(("INSERT INTO messages (id, kind, sender, group_id, body, ts) VALUES "
                       + ("(%s, %s, %s, %s, %s, %s)" if mysql else "(?, ?, ?, ?, ?, ?)")),
                      rows)
        if mysql:
            t.execute("SHOW INDEX FROM messages")
            indexes = sorted({_text(r[2]) for r in t.fetchall()})
        else:
            t.execute("SELECT name FROM sqlite_master WHERE type = 'index'"
                      " AND tbl_name = 'messages'")
            indexes = sorted(_text(r[0]) for r in t.fetchall())
        t.execute(("EXPLAIN " if mysql else "EXPLAIN QUERY PLAN ") + q, (10, 3, 50))
        return indexes, [tuple(map(_text, r)) for r in t.fetchall()]

    indexes, plan = run(db_url, explain)
    assert "messages_kind" not in indexes
    if mysql:
        (used,) = [r for r in plan if r[2] == "messages"]
        assert (used[3], used[5]) == ("range", "messages_group_unread"), plan
    else:
        assert any("messages_broadcasts" in str(r[-1]) for r in plan), plan


@pytest_twisted.ensureDeferred
async def test_a_daemon_waits_for_another_migration_past_its_read_timeout(
        mariadb: MariaDB) -> None:
    """Another process holds the schema lock for 12 s, past the pool's 10 s read
    timeout: the daemon polls for it in shorter waits, starts once it is released,
    and applies the migrations itself."""
    from twisted.internet import reactor

    mariadb.create_database("qq_locked")
    url = mariadb.url("qq_locked")
    holder = mariadb.connect("qq_locked")
    daemon = None
    try:
        cursor = holder.cursor()
        cursor.execute(f"SELECT GET_LOCK({LOCK_NAME}, 0)")
        assert cursor.fetchone()[0] == 1
        settings = Settings(listen="tcp:0:interface=127.0.0.1", db=url, hash_cost=4,
                            db_wait=5)
        daemon = build(settings, reactor)
        daemon.startService()
        await task.deferLater(reactor, 12, lambda: None)
        assert not daemon.listener.listening.called
        cursor.execute(f"SELECT RELEASE_LOCK({LOCK_NAME})")
        cursor.fetchall()
        await daemon.listener.listening.addTimeout(20, reactor)
        assert versions(url) == known(url)
    finally:
        holder.close()
        if daemon is not None:
            await defer.maybeDeferred(daemon.stopService).addTimeout(20, reactor)
        mariadb.drop_database("qq_locked")
