"""The log writer: group commit of appends and acks, one transaction per batch, never
one per message (the SQL is ``log.LogStore``'s)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from qqchat.metrics import LATENCY_BUCKETS, Registry
from qqchat.storage.log import CheckedAck, LogStore, NewMessage, Stored

#: entries (messages plus users' ack positions) one transaction carries
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class LogWriter:
    """Collects appends and acks and writes them in batches.

    Whatever arrives while a batch is being committed goes into the next one,
    so under load each transaction carries many messages while a lone message
    still commits at once. Callers' Deferreds fire in log order after commit,
    which is what makes live pushes leave in id order.
    """

    log = Logger()

    def __init__(self, store: LogStore, clock: IReactorTime, max_batch: int = 1000,
                 metrics: Registry | None = None, min_interval: float = 0.0) -> None:
        self._store = store
        self._clock = clock
        self._max_batch = max_batch
        #: seconds from one batch's start to the next one's at the least: under load a
        #: commit costs the same for 3 messages as for 30 (it is the fsync), so waiting
        #: a little for more buys CPU; a lone message still goes at once
        self._min_interval = min_interval
        self._last_start = float("-inf")
        self._messages: list[tuple[NewMessage, defer.Deferred[Stored]]] = []
        self._acks: dict[int, int] = {}
        #: the acks of the batch being written
        self._writing_acks: dict[int, int] = {}
        self._ack_waiters: list[defer.Deferred[None]] = []
        #: checked acks waiting for the next check transaction
        self._checks: list[tuple[CheckedAck, defer.Deferred[int]]] = []
        self._checks_scheduled: Any = None
        self._checks_running = False
        #: checked acks queued or in flight, per user, and who waits for them to finish
        self._checking: dict[int, int] = {}
        self._check_waiters: dict[int, list[defer.Deferred[None]]] = {}
        self._scheduled: Any = None
        self._writing = False
        self.batches = 0
        self._idle_waiters: list[defer.Deferred[None]] = []
        m = metrics if metrics is not None else Registry()
        self._batch_size = m.histogram(
            "qqchat_log_batch_size", "Entries (messages and acks) per log transaction.",
            BATCH_BUCKETS)
        self._commit_seconds = m.histogram(
            "qqchat_log_commit_seconds", "Time from a log batch's start to its commit.",
            LATENCY_BUCKETS)
        self._batches_failed = m.counter(
            "qqchat_log_batches_failed_total",
            "Log batches whose transaction failed (their senders got an error).")

    def append(self, message: NewMessage) -> defer.Deferred[Stored]:
        d: defer.Deferred[Stored] = defer.Deferred()
        self._messages.append((message, d))
        self._schedule()
        return d

    def ack(self, user_id: int, message_id: int) -> defer.Deferred[None]:
        """Record that ``user_id`` has everything up to ``message_id``; fires once durable."""
        if message_id > self._acks.get(user_id, 0):
            self._acks[user_id] = message_id
        d: defer.Deferred[None] = defer.Deferred()
        self._ack_waiters.append(d)
        self._schedule()
        return d

    def checked_ack(self, user_id: int, after: int, upto: int, seen: frozenset[int],
                    login: int | None = None) -> defer.Deferred[int]:
        """Several nodes: an ack checked against the log (``LogStore.checked_acks``),
        refused if the user has logged in again since the login stamped ``login``.
        The checks that arrive while one transaction of them runs share the next, as
        messages share a batch. ``settled`` and ``idle`` wait for them like for a
        batched ack."""
        d: defer.Deferred[int] = defer.Deferred()
        self._checks.append(((user_id, after, upto, seen, login), d))
        self._checking[user_id] = self._checking.get(user_id, 0) + 1
        if self._checks_scheduled is None and not self._checks_running:
            self._checks_scheduled = self._clock.callLater(0, self._run_checks)
        return d

    def _run_checks(self) -> None:
        self._checks_scheduled = None
        checks, self._checks = self._checks, []
        self._checks_running = True
        d = self._store.checked_acks([check for check, _ in checks])
        d.addCallbacks(self._checks_done, self._checks_failed, callbackArgs=(checks,),
                       errbackArgs=(checks,))
        d.addErrback(self._checks_unexpected, checks)

    def _checks_done(self, reached: list[int], checks: list[Any]) -> None:
        self._checks_running = False
        for (check, d), r in zip(checks, reached, strict=True):
            self._checked(check[0])
            d.callback(r)
        self._next_checks()

    def _checks_failed(self, failure: Failure, checks: list[Any]) -> None:
        self._checks_running = False
        for check, d in checks:
            self._checked(check[0])
            d.errback(failure)
        self._next_checks()

    def _next_checks(self) -> None:
        if self._checks:
            self._run_checks()
        elif not self._writing and not self.pending():
            self._done_idle()

    def _checked(self, user_id: int) -> None:
        left = self._checking.pop(user_id) - 1
        if left:
            self._checking[user_id] = left
        else:
            for w in self._check_waiters.pop(user_id, []):
                w.callback(None)

    def settled(self, user_id: int) -> defer.Deferred[None]:
        """Fires once no ack of ``user_id``'s is waiting to be written on this node: at
        once if none is queued or being written, else after the batch or check that
        carries it. A login waits for this before its backlog is read, so that an
        ack its old session sent here counts. Acks of another node's session are not
        seen here: ``LogStore.backlog_start`` and ``LogStore.checked_acks`` order those
        against the login in the database."""
        if user_id in self._checking:
            d: defer.Deferred[None] = defer.Deferred()
            self._check_waiters.setdefault(user_id, []).append(d)
            return d.addCallback(lambda _: self.settled(user_id))
        if user_id in self._acks or user_id in self._writing_acks:
            return self.ack(user_id, 0)  # the next batch commits after the one in flight
        return defer.succeed(None)

    def pending(self) -> int:
        return len(self._messages) + len(self._ack_waiters) + len(self._checking)

    def idle(self) -> defer.Deferred[None]:
        """Fires once everything appended so far is committed (or failed)."""
        if not self._writing and not self.pending():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(d)
        return d

    def _schedule(self) -> None:
        if self._scheduled is None and not self._writing:
            # next reactor turn at the earliest: everything that arrives in this turn
            # shares the batch
            delay = self._last_start + self._min_interval - self._clock.seconds()
            self._scheduled = self._clock.callLater(max(delay, 0.0), self._flush)

    def _flush(self) -> None:
        self._scheduled = None
        if not (self._messages or self._ack_waiters):
            return
        batch, self._messages = (self._messages[: self._max_batch],
                                 self._messages[self._max_batch :])
        acks, self._acks = self._acks, {}
        self._writing_acks = acks
        ack_waiters, self._ack_waiters = self._ack_waiters, []
        self._writing = True
        started = self._last_start = self._clock.seconds()
        self._batch_size.observe(len(batch) + len(acks))
        d = self._store.write_batch([m for m, _ in batch], acks.items(), int(started * 1000))
        d.addCallbacks(self._written, self._failed,
                       callbackArgs=(batch, ack_waiters, started),
                       errbackArgs=(batch, ack_waiters))
        d.addErrback(self._batch_unexpected, batch, ack_waiters)

    def _written(self, results: list[Stored], batch: list[Any],
                 ack_waiters: list[defer.Deferred[None]], started: float) -> None:
        self.batches += 1
        self._commit_seconds.observe(self._clock.seconds() - started)
        self._done()
        for (_, d), stored in zip(batch, results, strict=True):
            d.callback(stored)
        for w in ack_waiters:
            w.callback(None)

    def _failed(self, failure: Failure, batch: list[Any],
                ack_waiters: list[defer.Deferred[None]]) -> None:
        self._batches_failed.inc()
        self._done()
        for _, d in batch:
            d.errback(failure)
        for w in ack_waiters:
            w.errback(failure)

    # The last errbacks of the transactions' Deferreds: a bug in handling an outcome
    # is logged now (not when the Deferred is garbage collected, if ever), and every
    # caller still waiting gets the failure instead of waiting forever.

    def _batch_unexpected(self, failure: Failure, batch: list[Any],
                          ack_waiters: list[defer.Deferred[None]]) -> None:
        self.log.failure("handling the outcome of a log batch failed", failure)
        for d in [d for _, d in batch] + ack_waiters:
            if not d.called:
                d.errback(failure)

    def _checks_unexpected(self, failure: Failure, checks: list[Any]) -> None:
        self.log.failure("handling the outcome of checked acks failed", failure)
        self._checks_running = False
        for check, d in checks:
            if not d.called:
                self._checked(check[0])
                d.errback(failure)
        self._next_checks()

    def _done(self) -> None:
        self._writing = False
        self._writing_acks = {}
        if self._messages or self._ack_waiters:
            self._schedule()
        elif not self._checking:
            self._done_idle()

    def _done_idle(self) -> None:
        if self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for w in waiters:
                self._clock.callLater(0, w.callback, None)
