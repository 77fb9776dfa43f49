"""The runner every store shares: an adbapi pool and its engine.

Blocking code lives only in the ``txn`` functions, which adbapi runs in its
thread pool inside one transaction each (commit on return, rollback on raise).
Statements are written with ``?`` placeholders and translated by the engine. A
transaction the engine says was rolled back for a lock conflict (a MySQL deadlock
or lock wait timeout) is run again (``Access._retry``), so every ``txn`` must be
safe to run twice: it may touch only the database and its own locals. Errors the
engine calls "unavailable" reach callers as ``UnavailableError``.
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
from qqchat.storage.engines import Engine

T = TypeVar("T")


class Access:
    """One pool and its engine. Each store of a domain (accounts, social, groups, the
    message log, tokens, the directory) builds on it, so none repeats the plumbing.

    A store whose reads touch the message log sets ``reads_log``: then each of its
    ``_all`` and ``_one`` reads first has the engine make the whole log readable
    (SQLite: move staged messages), so no read of it can miss recent messages. Its
    own ``txn`` functions call ``self._engine.before_log_read(t)`` before they read
    the log."""

    _logger = Logger()
    #: this store reads the message log (see the class docstring)
    reads_log = False
    #: runs of one transaction at most, the first included, when the engine says it
    #: was rolled back for a lock conflict
    max_tries = 5
    #: seconds before the first rerun; doubled each time, with jitter
    retry_delay = 0.01

    def __init__(self, pool: adbapi.ConnectionPool, engine: Engine,
                 clock: IReactorTime | None = None) -> None:
        self._pool = pool
        self._engine = engine
        #: when reruns are scheduled; by default the reactor the pool reports to
        self._clock: IReactorTime = clock if clock is not None else pool._reactor
        self._q = engine.sql

    @property
    def engine(self) -> Engine:
        return self._engine

    def _run(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        d = self._pool.runInteraction(fn, *args)
        if self._engine.lock_conflicts:
            d.addErrback(self._retry, fn, args, 1)
        d.addErrback(self._translate)
        return d

    def _retry(self, failure: Failure, fn: Callable[..., T], args: tuple[Any, ...],
               tries: int) -> defer.Deferred[T] | Failure:
        """Run ``fn`` again when it was rolled back for a lock conflict: nothing of it
        was kept, and the next run usually gets through (the other transaction has
        finished). Bounded, with a growing, jittered pause so that two transactions
        that collided do not collide again in step; each rerun is logged."""
        code = self._engine.lock_conflict(failure)
        if code is None or tries >= self.max_tries:
            return failure
        delay = self.retry_delay * 2 ** (tries - 1) * (0.5 + random.random())
        self._logger.warn("transaction {txn} rolled back by {engine} error {code} (deadlock "
                          "or lock wait timeout); running it again in {ms:.0f} ms, "
                          "try {next} of {max}", txn=getattr(fn, "__qualname__", repr(fn)),
                          engine=self._engine.name, code=code, ms=delay * 1000,
                          next=tries + 1, max=self.max_tries)
        d = task.deferLater(self._clock, delay, self._pool.runInteraction, fn, *args)
        d.addErrback(self._retry, fn, args, tries + 1)
        return d

    def _translate(self, failure: Failure) -> Failure:
        if failure.check(*self._engine.unavailable_errors):
            raise UnavailableError("the database")
        return failure

    def _all(self, sql: str, *params: Any) -> defer.Deferred[list[tuple[Any, ...]]]:
        q = self._q(sql)
        engine = self._engine if self.reads_log else None

        def txn(t: Any) -> list[tuple[Any, ...]]:
            if engine is not None:
                engine.before_log_read(t)
            t.execute(q, params)
            return list(t.fetchall())

        return self._run(txn)

    def _one(self, sql: str, *params: Any) -> defer.Deferred[tuple[Any, ...] | None]:
        q = self._q(sql)
        engine = self._engine if self.reads_log else None

        def txn(t: Any) -> tuple[Any, ...] | None:
            if engine is not None:
                engine.before_log_read(t)
            t.execute(q, params)
            return t.fetchone()

        return self._run(txn)

    @staticmethod
    def _placeholders(n: int) -> str:
        return ",".join("?" * n)
