"""Group commit for the message log: one transaction per batch, never one per message."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from qqchat.storage.store import NewMessage, Store, Stored


class MessageLog:
    """Collects appends and acks and writes them in batches.

    Whatever arrives while a batch is being committed goes into the next one,
    so under load each transaction carries many messages while a lone message
    still commits at once. Callers' Deferreds fire in log order after commit,
    which is what makes live pushes leave in id order.
    """

    log = Logger()

    def __init__(self, store: Store, clock: IReactorTime, max_batch: int = 1000) -> None:
        self._store = store
        self._clock = clock
        self._max_batch = max_batch
        self._messages: list[tuple[NewMessage, defer.Deferred[Stored]]] = []
        self._acks: dict[int, int] = {}
        self._ack_waiters: list[defer.Deferred[None]] = []
        self._scheduled: Any = None
        self._writing = False
        self.batches = 0
        self._idle_waiters: list[defer.Deferred[None]] = []

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

    def pending(self) -> int:
        return len(self._messages) + len(self._ack_waiters)

    def idle(self) -> defer.Deferred[None]:
        """Fires once everything appended so far is committed (or failed)."""
        if not self._writing and not self.pending():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(d)
        return d

    def _schedule(self) -> None:
        if self._scheduled is None and not self._writing:
            # next reactor turn: everything that arrives in this turn shares the batch
            self._scheduled = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._scheduled = None
        if not (self._messages or self._ack_waiters):
            return
        batch, self._messages = (self._messages[: self._max_batch],
                                 self._messages[self._max_batch :])
        acks, self._acks = self._acks, {}
        ack_waiters, self._ack_waiters = self._ack_waiters, []
        self._writing = True
        now = int(self._clock.seconds() * 1000)
        d = self._store.write_batch([m for m, _ in batch], acks.items(), now)
        d.addCallbacks(self._written, self._failed,
                       callbackArgs=(batch, ack_waiters), errbackArgs=(batch, ack_waiters))

    def _written(self, results: list[Stored], batch: list[Any],
                 ack_waiters: list[defer.Deferred[None]]) -> None:
        self.batches += 1
        self._done()
        for (_, d), stored in zip(batch, results, strict=True):
            d.callback(stored)
        for w in ack_waiters:
            w.callback(None)

    def _failed(self, failure: Failure, batch: list[Any],
                ack_waiters: list[defer.Deferred[None]]) -> None:
        self._done()
        for _, d in batch:
            d.errback(failure)
        for w in ack_waiters:
            w.errback(failure)

    def _done(self) -> None:
        self._writing = False
        if self._messages or self._ack_waiters:
            self._schedule()
        elif self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for w in waiters:
                self._clock.callLater(0, w.callback, None)
