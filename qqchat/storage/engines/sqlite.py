"""SQLite: one connection, serial writes, and a staging table for new messages."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from twisted.enterprise import adbapi

from qqchat.storage.engines.base import (
    LOG_COLUMNS,
    ConnectError,
    Engine,
    NoSuchDatabaseError,
    conversation_statements,
)

if TYPE_CHECKING:
    from qqchat.storage.pool import DatabaseConfig

#: staged messages are moved into the indexed table once this many wait
STAGE_ROWS = 1000
#: every commit survives a power loss (``SqliteEngine.unsynced`` aside)
SYNCED = "PRAGMA synchronous=FULL"


def _open(conn: sqlite3.Connection) -> None:
    # WAL lets readers run beside the writer; FULL makes each commit survive power loss.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(SYNCED)
    conn.execute("PRAGMA busy_timeout=5000")


class SqliteEngine(Engine):
    """SQLite has one writer at a time, so locking reads are not needed (a write
    transaction is serial already), and every statement is a call into the library,
    not a round trip. What it lacks is cheap index maintenance on a fsync'd commit:
    new messages are inserted into ``messages_recent``, a table without secondary
    indexes, and moved into the indexed ``messages`` a thousand at a time, and
    before any read of the log (db/sqlite.sql says more)."""

    name = "sqlite"
    stages_log = True
    log_table = "messages_recent"

    @classmethod
    def keep_greatest(cls, keys: str, column: str, table: str) -> str:
        return (f" ON CONFLICT ({keys}) DO UPDATE SET"
                f" {column} = max({column}, excluded.{column})")

    def reserve_ids(self, t: Any, n: int) -> int:
        t.execute("UPDATE log_seq SET last_id = last_id + ? WHERE id = 1", (n,))
        t.execute("SELECT last_id FROM log_seq WHERE id = 1")
        return int(t.fetchone()[0])

    # -- staging ----------------------------------------------------------

    def before_log_read(self, t: Any) -> None:
        t.execute("SELECT 1 FROM messages_recent LIMIT 1")
        if t.fetchone() is not None:
            self.unstage(t)

    def after_log_insert(self, t: Any, next_id: int) -> None:
        t.execute("SELECT MIN(id) FROM messages_recent")
        if next_id - int(t.fetchone()[0]) >= STAGE_ROWS:
            self.unstage(t)

    def unstage(self, t: Any) -> None:
        """Move staged messages into the indexed log, and update what is derived from
        it (the conversation list, each group's newest message) in the same bulk
        step: one index page write per thousand messages, not one per message."""
        for stmt in _MOVE:
            t.execute(stmt)

    # -- commits ----------------------------------------------------------

    @contextmanager
    def unsynced(self, t: Any) -> Iterator[None]:
        """Commit the block with ``synchronous=NORMAL``: its pages go to the WAL and
        are synced by the next synced commit (a message batch) or checkpoint, not
        waited for now. That saves a login an fsync. Such a commit survives a crash of
        the daemon (the OS holds the write); only with the OS can it be lost, and then
        whole (recovery stops at the last commit that reached the disk) and together
        with every session it spoke for. Whatever happens, the connection is left
        synced for the commits that must be."""
        t.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
            t.connection.commit()
        finally:
            t.execute(SYNCED)

    # -- schema -----------------------------------------------------------

    def table_exists(self, t: Any, table: str) -> bool:
        t.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
        return t.fetchone() is not None

    def has_column(self, t: Any, table: str, column: str) -> bool:
        t.execute(f"PRAGMA table_info({table})")
        return any(row[1] == column for row in t.fetchall())

    @contextmanager
    def schema_lock(self, t: Any) -> Iterator[None]:
        """A write transaction taken at once: the whole run, or none of it."""
        conn = getattr(t, "connection", None)
        if conn is not None and not conn.in_transaction:
            t.execute("BEGIN IMMEDIATE")
        yield

    def after_migrations(self, t: Any, applied: int) -> None:
        self.unstage(t)  # what a stop left staged, before anything reads the log

    # -- connections ------------------------------------------------------

    @classmethod
    def describe(cls, config: DatabaseConfig) -> str:
        return f"sqlite:///{config.path}"

    @classmethod
    def driver(cls) -> Any:
        return sqlite3

    @classmethod
    def make_pool(cls, config: DatabaseConfig, reactor: Any) -> adbapi.ConnectionPool:
        directory = os.path.dirname(os.path.abspath(config.path))
        os.makedirs(directory, exist_ok=True)
        # one connection: SQLite has one writer anyway, and it keeps commits ordered
        return adbapi.ConnectionPool(
            "sqlite3",
            config.path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_open,
            cp_reactor=reactor,
            cp_noisy=False,
        )

    @classmethod
    def connect(cls, config: DatabaseConfig, create: bool, lock_wait_ms: int,
                timeouts: bool) -> Any:
        path = config.path
        if not create and not os.path.exists(path):
            raise NoSuchDatabaseError(f"no database at sqlite:///{path}")
        try:
            if create:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            conn = sqlite3.connect(path)
            # as the daemon's connection: WAL, durable commits, and wait for its writes
            conn.execute(f"PRAGMA busy_timeout={int(lock_wait_ms)}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(SYNCED)
        except (OSError, sqlite3.Error) as e:
            raise ConnectError(f"cannot open sqlite:///{path}: {e}") from None
        return conn


#: ``unstage``: what is derived from the staged rows first, then the rows themselves
_MOVE = [
    *conversation_statements(SqliteEngine, "messages_recent"),
    "UPDATE chat_groups SET last_id = (SELECT MAX(r.id) FROM messages_recent r"
    " WHERE r.kind = 2 AND r.group_id = chat_groups.id)"
    " WHERE id IN (SELECT group_id FROM messages_recent WHERE kind = 2)",
    f"INSERT INTO messages ({LOG_COLUMNS}) SELECT {LOG_COLUMNS} FROM messages_recent",
    "DELETE FROM messages_recent",
]
