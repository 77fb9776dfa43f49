"""What every store shares: the adbapi pool, the dialect, and how SQL reaches them.

Blocking code lives only in the ``txn`` functions, which adbapi runs in its
thread pool inside one transaction each (commit on return, rollback on raise).
Statements are written with ``?`` placeholders and translated once for MySQL.
A MySQL transaction rolled back by a deadlock or a lock wait timeout is run
again (``Access._retry``), so every ``txn`` must be safe to run twice: it may
touch only the database and its own locals.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.enterprise import adbapi
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from qqchat.errors import UnavailableError
from qqchat.storage.schema import move_staged

T = TypeVar("T")

#: MySQL errors that roll back a transaction (or its statement) only because of the
#: order in which transactions took locks: ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT
LOCK_CONFLICTS = frozenset({1213, 1205})


class Access:
    """One pool and its dialect: placeholders, error translation, reads that see the
    whole log. Each store of a domain (users and the log, tokens, the directory)
    builds on it, so none of them repeats the plumbing."""

    log = Logger()
    #: runs of one transaction at most, the first included, when MySQL rolls it back
    #: for a lock conflict
    max_tries = 5
    #: seconds before the first rerun; doubled each time, with jitter
    retry_delay = 0.01

    def __init__(self, pool: adbapi.ConnectionPool, dialect: str,
                 clock: IReactorTime | None = None) -> None:
        self._pool = pool
        self.dialect = dialect
        #: when reruns are scheduled; by default the reactor the pool reports to
        self._clock: IReactorTime = clock if clock is not None else pool._reactor
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
        if self.dialect == "mysql":
            d.addErrback(self._retry, fn, args, 1)
        d.addErrback(self._translate)
        return d

    def _retry(self, failure: Failure, fn: Callable[..., T], args: tuple[Any, ...],
               tries: int) -> defer.Deferred[T] | Failure:
        """Run ``fn`` again when MySQL rolled it back for a deadlock or a lock wait
        timeout: nothing of it was kept, and the next run usually gets through (the
        other transaction has finished). Bounded, with a growing, jittered pause so
        that two transactions that collided do not collide again in step; each
        rerun is logged."""
        code = failure.value.args[0] if (failure.check(self._pool.dbapi.DatabaseError)
                                         and failure.value.args) else None
        if code not in LOCK_CONFLICTS or tries >= self.max_tries:
            return failure
        delay = self.retry_delay * 2 ** (tries - 1) * (0.5 + random.random())
        self.log.warn("transaction {txn} rolled back by MySQL error {code} (deadlock or "
                      "lock wait timeout); running it again in {ms:.0f} ms, "
                      "try {next} of {max}", txn=getattr(fn, "__qualname__", repr(fn)),
                      code=code, ms=delay * 1000, next=tries + 1, max=self.max_tries)
        d = task.deferLater(self._clock, delay, self._pool.runInteraction, fn, *args)
        d.addErrback(self._retry, fn, args, tries + 1)
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
