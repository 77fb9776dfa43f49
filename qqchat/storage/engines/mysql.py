"""MySQL / MariaDB: a pool of connections to a server, where each statement is a
round trip and rows are locked for concurrent writers (several daemons, one database)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from twisted.enterprise import adbapi
from twisted.logger import Logger

from qqchat.errors import StartupError
from qqchat.storage.engines.base import ConnectError, DatabaseURLError, Engine, Rows

if TYPE_CHECKING:
    from qqchat.storage.pool import DatabaseConfig

_log = Logger()

#: ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT: a transaction (or its statement) rolled back
#: only because of the order in which transactions took locks
LOCK_CONFLICTS = frozenset({1213, 1205})

#: the SQL of the schema lock's name: one per database on the server (names are at
#: most 64 characters, so the database name is hashed); operators see it in SHOW
#: PROCESSLIST
LOCK_NAME = "CONCAT('qqchat_schema_', MD5(DATABASE()))"
#: seconds per GET_LOCK: under the daemon's 10 s read timeout, so a wait is polled
_LOCK_POLL = 5
#: seconds to wait for another process's migration run before giving up
LOCK_WAIT = 600.0


class SchemaLockError(StartupError):
    """Another process held the schema lock for longer than ``LOCK_WAIT``."""


def _open(conn: Any) -> None:
    cursor = conn.cursor()
    cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    cursor.close()


class MySQLEngine(Engine):
    """Every statement costs a round trip, so where a transaction can send several
    at once it does (``result_sets``, ``execute_each``); and several daemons write
    one database, so checks that must not race take row locks (``lock_rows``,
    ``for_update``), and a transaction rolled back for a lock conflict is worth
    running again."""

    name = "mysql"
    param = "%s"
    for_update = " FOR UPDATE"
    share_lock = " LOCK IN SHARE MODE"
    greatest = "GREATEST"
    multi_statements = True
    #: LAST_INSERT_ID(expr) in ``reserve_ids`` hands the new head back with the
    #: UPDATE's reply, and later statements of the same connection can use it
    reserved_head = "LAST_INSERT_ID()"
    reserve_sql = "UPDATE log_seq SET last_id = LAST_INSERT_ID(last_id + %s) WHERE id = 1"
    waits_for_server = True
    lock_conflicts = LOCK_CONFLICTS
    #: statements per multi-statement in ``execute_each`` (its packet stays small)
    each_chunk = 500
    #: ``log_ids``, a SEQUENCE (migration 3): NEXTVAL takes no lock that lasts to
    #: commit and is not rolled back, and values are handed out in increasing order
    #: across every connection of the server
    has_log_positions = True
    #: n values of the sequence in one statement (a recursive CTE rather than the
    #: seq_1_to_n tables, whose engine a server may lack)
    _NEXT_IDS = ("WITH RECURSIVE r (k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM r"
                 " WHERE k < %s) SELECT NEXTVAL(log_ids) FROM r")

    def sql(self, sql: str) -> str:
        cached = self._sql_cache.get(sql)
        if cached is None:
            cached = self._sql_cache[sql] = sql.replace("?", "%s")
        return cached

    @classmethod
    def keep_greatest(cls, keys: str, column: str, table: str) -> str:
        return (f" ON DUPLICATE KEY UPDATE"
                f" {column} = GREATEST({table}.{column}, VALUES({column}))")

    def lock_rows(self, t: Any, sql: str, params: Sequence[Any]) -> None:
        t.execute(sql + self.for_update, params)
        t.fetchall()

    def reserve_ids(self, t: Any, n: int) -> int:
        # the head comes back with the UPDATE's reply, saving the SELECT's round
        # trip while the log_seq lock is held
        t.execute(self.reserve_sql, (n,))
        return int(t.lastrowid)

    @property
    def derives_later(self) -> bool:
        """In lock order: a batch's own upsert of the conversation rows was the
        costliest part of its transaction (two rows and their secondary index moved
        per message pair, with the log_seq lock held), and the committed head says
        what is complete, so the rows are caught up in bulk instead. In positions
        order nothing says which ids below the head are still to commit, so each
        batch writes them as before."""
        return self.log_order == "lock"

    def next_ids(self, t: Any, n: int) -> list[int]:
        t.execute(self._NEXT_IDS, (n,))
        return sorted(int(r[0]) for r in t.fetchall())

    def sequence_head(self, t: Any) -> int:
        # takes one value: cheap (the sequence is cached, no fsync), and unlike the
        # table's next_not_cached_value it bounds the values other connections hold
        # in the cache too
        t.execute("SELECT NEXTVAL(log_ids)")
        return int(t.fetchone()[0])

    def sync_log_heads(self, t: Any) -> None:
        t.execute("SELECT GREATEST(s.last_id, COALESCE((SELECT MAX(id) FROM messages), 0))"
                  " FROM log_seq s WHERE s.id = 1")
        row = t.fetchone()
        top = int(row[0]) if row is not None else 0
        if self.log_order == "positions":
            # SETVAL takes a literal only, and ignores a value below the current one
            t.execute(f"SELECT SETVAL(log_ids, {top:d})")
            t.fetchall()
        else:
            t.execute("UPDATE log_seq SET last_id = %s WHERE id = 1 AND last_id < %s",
                      (top, top))

    def execute_each(self, t: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """MySQLdb's ``executemany`` sends an UPDATE per row, a round trip each: these
        go as multi-statements instead (a group message acked by its 199 receivers
        at once was 199 round trips)."""
        for i in range(0, len(rows), self.each_chunk):
            chunk = rows[i : i + self.each_chunk]
            t.execute(";\n".join([sql] * len(chunk)), [v for row in chunk for v in row])
            while t.nextset():
                pass

    def result_sets(self, t: Any, statements: Sequence[tuple[str, Sequence[Any]]]
                    ) -> list[Rows]:
        """One multi-statement, one round trip."""
        params: list[Any] = []
        for _, p in statements:
            params += p
        return self.run_script(t, [sql for sql, _ in statements], params)

    def run_script(self, t: Any, statements: Sequence[str], params: Sequence[Any]
                   ) -> list[Rows]:
        t.execute(";\n".join(statements), params)
        out: list[Rows] = []
        while True:
            if t.description is not None:
                out.append(list(t.fetchall()))
            if not t.nextset():
                return out

    # -- schema -----------------------------------------------------------

    def table_exists(self, t: Any, table: str) -> bool:
        t.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE()"
                  " AND table_name = %s", (table,))
        return t.fetchone() is not None

    def has_column(self, t: Any, table: str, column: str) -> bool:
        t.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = DATABASE()"
                  " AND table_name = %s AND column_name = %s", (table, column))
        return t.fetchone() is not None

    def column_type(self, t: Any, table: str, column: str) -> tuple[str, int] | None:
        t.execute("SELECT DATA_TYPE, CHARACTER_MAXIMUM_LENGTH FROM information_schema.columns"
                  " WHERE table_schema = DATABASE() AND table_name = %s AND column_name = %s",
                  (table, column))
        row = t.fetchone()
        if row is None:
            return None
        kind = row[0].decode() if isinstance(row[0], bytes | bytearray) else str(row[0])
        return kind.lower(), int(row[1] or 0)

    def add_column(self, table: str, column: str, definition: str) -> str:
        return f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {definition}"

    def drop_index(self, table: str, index: str) -> str:
        return f"DROP INDEX IF EXISTS {index} ON {table}"

    @contextmanager
    def schema_lock(self, t: Any) -> Iterator[None]:
        """A named lock: DDL cannot be held in a transaction on MariaDB, which commits
        each DDL statement on its own."""
        deadline = time.monotonic() + LOCK_WAIT
        waited = False
        while True:
            t.execute(f"SELECT GET_LOCK({LOCK_NAME}, {_LOCK_POLL})")
            row = t.fetchone()
            if row is not None and row[0] == 1:
                break
            if time.monotonic() >= deadline:
                raise SchemaLockError(
                    f"another process has held this database's schema lock for {LOCK_WAIT:g} s "
                    "(a migration still running, or stuck: see SHOW PROCESSLIST)")
            if not waited:
                _log.info("schema: another process is migrating this database; waiting")
                waited = True
        try:
            yield
        finally:
            with suppress(Exception):  # gone with the connection, which releases it anyway
                t.execute(f"SELECT RELEASE_LOCK({LOCK_NAME})")
                t.fetchall()

    def after_migrations(self, t: Any, applied: int) -> None:
        if applied:
            t.execute("COMMIT")  # before the lock goes, so the next holder sees the rows

    # -- connections ------------------------------------------------------

    @classmethod
    def describe(cls, config: DatabaseConfig) -> str:
        return f"mysql://{config.user}@{config.host}:{config.port}/{config.database}"

    @classmethod
    def check_driver(cls) -> None:
        try:
            import MySQLdb  # noqa: F401
        except ImportError:
            raise DatabaseURLError(
                "--db mysql:// needs the mysqlclient driver: pip install 'qqchat[mysql]' "
                "(it builds against MariaDB's headers: apt-get install "
                "default-libmysqlclient-dev pkg-config build-essential)"
            ) from None

    @classmethod
    def driver(cls) -> Any:
        cls.check_driver()
        import MySQLdb

        return MySQLdb

    @classmethod
    def make_pool(cls, config: DatabaseConfig, reactor: Any) -> adbapi.ConnectionPool:
        cls.check_driver()
        from MySQLdb.constants import CLIENT

        return adbapi.ConnectionPool(
            "MySQLdb",
            host=config.host,
            port=config.port,
            user=config.user,
            passwd=config.password,
            db=config.database,
            charset="utf8mb4",
            # the message log writes a batch as one multi-statement (LogStore.write_batch);
            # every text value in it is escaped by the driver; the integers are
            # written as literals, formatted with int() (LogStore._write_in_one_trip)
            client_flag=CLIENT.MULTI_STATEMENTS,
            connect_timeout=5,
            # a server that stops answering must give `unavailable`, not a hung request
            read_timeout=10,
            write_timeout=10,
            cp_min=config.pool_min,
            cp_max=config.pool_max,
            cp_reconnect=config.reconnect,
            cp_openfun=_open,
            cp_reactor=reactor,
            cp_noisy=False,
        )

    @classmethod
    def connect(cls, config: DatabaseConfig, create: bool, lock_wait_ms: int,
                timeouts: bool) -> Any:
        cls.check_driver()
        import MySQLdb

        limits = {"read_timeout": 10, "write_timeout": 10} if timeouts else {}
        try:
            return MySQLdb.connect(host=config.host, port=config.port, user=config.user,
                                   passwd=config.password, db=config.database,
                                   charset="utf8mb4", connect_timeout=5, **limits)
        except MySQLdb.Error as e:
            raise ConnectError(f"database {cls.describe(config)} unreachable: {e}") from None
