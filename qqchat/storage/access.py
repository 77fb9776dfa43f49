"""What every store shares: the adbapi pool, the dialect, and how SQL reaches them.

Blocking code lives only in the ``txn`` functions, which adbapi runs in its
thread pool inside one transaction each (commit on return, rollback on raise).
Statements are written with ``?`` placeholders and translated once for MySQL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.python.failure import Failure

from qqchat.errors import UnavailableError
from qqchat.storage.schema import move_staged

T = TypeVar("T")


class Access:
    """One pool and its dialect: placeholders, error translation, reads that see the
    whole log. Each store of a domain (users and the log, tokens, the directory)
    builds on it, so none of them repeats the plumbing."""

    def __init__(self, pool: adbapi.ConnectionPool, dialect: str) -> None:
        self._pool = pool
        self.dialect = dialect
        #: SQLite writes new messages to ``messages_recent`` (db/sqlite.sql says why)
        self._staged = dialect == "sqlite"
        self._log_table = "messages_recent" if self._staged else "messages"
        self._sql_cache: dict[str, str] = {}
        dbapi = pool.dbapi
        self._integrity_error = dbapi.IntegrityError
        self._unavailable_errors: tuple[type[BaseException], ...] = (
            dbapi.OperationalError,
            dbapi.InterfaceError,
            adbapi.ConnectionLost,
        )

    # -- plumbing ---------------------------------------------------------

    def _q(self, sql: str) -> str:
        """Translate ``?`` placeholders for MySQLdb's %s paramstyle, once per statement."""
        cached = self._sql_cache.get(sql)
        if cached is None:
            cached = sql.replace("?", "%s") if self.dialect == "mysql" else sql
            self._sql_cache[sql] = cached
        return cached

    def _run(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        d = self._pool.runInteraction(fn, *args)
        d.addErrback(self._translate)
        return d

    def _translate(self, failure: Failure) -> Failure:
        if failure.check(*self._unavailable_errors):
            raise UnavailableError("the database")
        return failure

    def _all(self, sql: str, *params: Any) -> defer.Deferred[list[tuple[Any, ...]]]:
        q = self._q(sql)

        def txn(t: Any) -> list[tuple[Any, ...]]:
            t.execute(q, params)
            return list(t.fetchall())

        return self._run(txn)

    def _one(self, sql: str, *params: Any) -> defer.Deferred[tuple[Any, ...] | None]:
        q = self._q(sql)

        def txn(t: Any) -> tuple[Any, ...] | None:
            t.execute(q, params)
            return t.fetchone()

        return self._run(txn)

    def _log_all(self, sql: str, *params: Any) -> defer.Deferred[list[tuple[Any, ...]]]:
        """As ``_all``, for a read of the message log: staged messages are moved first."""
        q = self._q(sql)

        def txn(t: Any) -> list[tuple[Any, ...]]:
            self._settle(t)
            t.execute(q, params)
            return list(t.fetchall())

        return self._run(txn)

    def _settle(self, t: Any) -> None:
        """Move every staged message into ``messages``, so that reads see the whole log."""
        if self._staged:
            t.execute("SELECT 1 FROM messages_recent LIMIT 1")
            if t.fetchone() is not None:
                move_staged(t)

    def _placeholders(self, n: int) -> str:
        return ",".join("?" * n)
