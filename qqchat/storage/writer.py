"""The log writer: group commit of appends and acks, one transaction per batch, never
one per message (the SQL is ``log.LogStore``'s). Two ``Batcher``s: one for the log's
batches, one for the checked acks of a cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from qqchat.metrics import LATENCY_BUCKETS, Registry
from qqchat.storage.batcher import Batcher, Entry, Waiter
from qqchat.storage.log import CheckedAck, LogStore, NewMessage, Stored
from qqchat.storage.positions import InFlight, LogPositions

#: batches one node keeps in flight at once with ``--log-order positions``
POSITIONED_IN_FLIGHT = 3

#: entries (messages plus users' ack positions) one transaction carries
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class _AckWaiter:
    """Queued beside the messages for whoever waits for the acks of the next batch."""


_ACK_WAITER = _AckWaiter()

#: what the log's batcher queues: a message, or a wait for the acks
_Item = NewMessage | _AckWaiter


class LogWriter:
    """Collects appends and acks and writes them in batches.

    Whatever arrives while a batch is being committed goes into the next one,
    so under load each transaction carries many messages while a lone message
    still commits at once. Callers' Deferreds fire in log order after commit,
    which is what makes live pushes leave in id order.

    With ``positions`` (``--log-order positions``) up to ``POSITIONED_IN_FLIGHT``
    batches run at once, each registered with the node's ``LogPositions`` from its
    start to its outcome, and ``safe`` (``ClusterView.safe``) caps the checked
    acks. Callers still hear batch by batch in the order the batches began; ids no
    longer follow that order (another batch of this node may have taken its ids
    first), so one node's pushes may leave out of id order, as pushes from two
    nodes always could: cluster acks are checked against what each session was
    sent, which is why this order needs a cluster (``--redis``).
    """

    def __init__(self, store: LogStore, clock: IReactorTime, max_batch: int = 1000,
                 metrics: Registry | None = None, min_interval: float = 0.0,
                 positions: LogPositions | None = None,
                 safe: Callable[[int], defer.Deferred[int]] | None = None,
                 max_in_flight: int = POSITIONED_IN_FLIGHT) -> None:
        self._store = store
        self._positions = positions
        self._safe = safe
        self._clock = clock
        self._max_batch = max_batch
        #: ack positions waiting for the next batch, per user, and those of each batch
        #: being written
        self._acks: dict[int, int] = {}
        self._writing_acks: list[dict[int, int]] = []
        #: ack waiters in the queue, and in the batch being taken
        self._queued_waiters = 0
        self._batch_waiters = 0
        #: min_interval: seconds from one batch's start to the next one's at the least:
        #: under load a commit costs the same for 3 messages as for 30 (it is the
        #: fsync), so waiting a little for more buys CPU; a lone message still goes
        #: at once
        self._batches: Batcher[_Item, Stored | None] = Batcher(
            clock, self._write, what="a log batch", min_interval=min_interval,
            take=self._take, on_idle=self._maybe_idle,
            max_in_flight=max_in_flight if positions is not None else 1)
        self._checks: Batcher[CheckedAck, int] = Batcher(
            clock, self._check, what="checked acks", chain=True, on_idle=self._maybe_idle)
        #: checked acks queued or in flight, per user, and who waits for them to finish
        self._checking: dict[int, int] = {}
        self._check_waiters: dict[int, list[defer.Deferred[None]]] = {}
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

    def append(self, message: NewMessage, waiter: Waiter | None = None
               ) -> defer.Deferred[Stored] | None:
        """Queue ``message``; its ``Stored`` fires the returned Deferred once committed,
        or, given ``waiter``, is handed to that (and None is returned)."""
        if waiter is None:
            return self._batches.add(message)  # type: ignore[return-value]
        self._batches.add_waiter(message, waiter)
        return None

    def ack(self, user_id: int, message_id: int, waiter: Waiter | None = None
            ) -> defer.Deferred[None] | None:
        """Record that ``user_id`` has everything up to ``message_id``; fires (or calls
        ``waiter`` back) once durable."""
        if message_id > self._acks.get(user_id, 0):
            self._acks[user_id] = message_id
        self._queued_waiters += 1
        if waiter is None:
            return self._batches.add(_ACK_WAITER)  # type: ignore[return-value]
        self._batches.add_waiter(_ACK_WAITER, waiter)
        return None

    # -- the log's batches ------------------------------------------------

    def _take(self, queue: list[Entry[_Item]]
              ) -> tuple[list[Entry[_Item]], list[Entry[_Item]]]:
        """Up to ``max_batch`` messages, then everyone waiting for acks: every queued
        ack goes into this batch, whatever the number of messages."""
        n = self._max_batch
        self._batch_waiters, self._queued_waiters = self._queued_waiters, 0
        if not self._batch_waiters:
            return queue[:n], queue[n:]
        messages = [e for e in queue if not isinstance(e[0], _AckWaiter)]
        waiters = [e for e in queue if isinstance(e[0], _AckWaiter)]
        return messages[:n] + waiters, messages[n:]

    def _write(self, items: list[_Item], started: float) -> defer.Deferred[list[Any]]:
        waiters = self._batch_waiters
        messages: list[NewMessage] = (
            items[: len(items) - waiters] if waiters else items)  # type: ignore[assignment]
        acks, self._acks = self._acks, {}
        self._writing_acks.append(acks)
        self._batch_size.observe(len(messages) + len(acks))
        flight = None
        if self._positions is None:
            d = self._store.write_batch(messages, acks.items(), int(started * 1000))
        else:
            flight = self._positions.begin()
            d = self._store.write_batch(messages, acks.items(), int(started * 1000), flight,
                                        self._positions)
        d.addCallbacks(self._written, self._failed,
                       callbackArgs=(len(messages), waiters, started, acks, flight),
                       errbackArgs=(acks, flight))
        return d

    def _written(self, stored: list[Stored], messages: int, waiters: int,
                 started: float, acks: dict[int, int], flight: InFlight | None
                 ) -> list[Stored | None]:
        self.batches += 1
        self._writing_acks.remove(acks)
        if flight is not None:
            assert self._positions is not None
            self._positions.end(flight, max((s.id for s in stored if not s.duplicate),
                                            default=0))
        self._commit_seconds.observe(self._clock.seconds() - started)
        # the ack waiters' results, only when every message has its own: a short
        # answer is a bug, which the batcher reports
        return stored + [None] * waiters if len(stored) == messages else list(stored)

    def _failed(self, failure: Failure, acks: dict[int, int], flight: InFlight | None
                ) -> Failure:
        self._batches_failed.inc()
        self._writing_acks.remove(acks)
        if flight is not None:
            assert self._positions is not None
            self._positions.end(flight, certain=not flight.committing)
        return failure

    # -- checked acks -----------------------------------------------------

    def checked_ack(self, user_id: int, after: int, upto: int, seen: frozenset[int],
                    login: int | None = None) -> defer.Deferred[int]:
        """Several nodes: an ack checked against the log (``LogStore.checked_acks``),
        refused if the user has logged in again since the login stamped ``login``.
        The checks that arrive while one transaction of them runs share the next, as
        messages share a batch. ``acks_written`` and ``idle`` wait for them like for a
        batched ack."""
        self._checking[user_id] = self._checking.get(user_id, 0) + 1
        d = self._checks.add((user_id, after, upto, seen, login))
        return d.addBoth(self._checked, user_id)

    def _check(self, checks: list[CheckedAck], started: float) -> defer.Deferred[list[int]]:
        if self._safe is None:
            return self._store.checked_acks(checks)
        # --log-order positions: no further than the safe position, below which
        # nothing can still commit (waited for, a little, when it is behind)
        d = self._safe(max(c[2] for c in checks))
        d.addCallback(self._check_capped, checks)
        return d

    def _check_capped(self, safe: int, checks: list[CheckedAck]) -> defer.Deferred[list[int]]:
        return self._store.checked_acks(
            [(user, after, max(after, min(upto, safe)), seen, login)
             for user, after, upto, seen, login in checks])

    def _checked(self, result: Any, user_id: int) -> Any:
        left = self._checking.pop(user_id) - 1
        if left:
            self._checking[user_id] = left
        else:
            for w in self._check_waiters.pop(user_id, []):
                w.callback(None)
        return result

    # -- waiting ----------------------------------------------------------

    def acks_written(self, user_id: int) -> defer.Deferred[None]:
        """Fires once no ack of ``user_id``'s is waiting to be written on this node: at
        once if none is queued or being written, else after the batch or check that
        carries it. A login waits for this before its backlog is read, so that an
        ack its old session sent here counts. Acks of another node's session are not
        seen here: ``LogStore.backlog_start`` and ``LogStore.checked_acks`` order
        those against the login in the database."""
        if user_id in self._checking:
            d: defer.Deferred[None] = defer.Deferred()
            self._check_waiters.setdefault(user_id, []).append(d)
            return d.addCallback(lambda _: self.acks_written(user_id))
        if user_id in self._acks or any(user_id in a for a in self._writing_acks):
            # the next batch's callers hear after those of the batches in flight
            return self.ack(user_id, 0)
        return defer.succeed(None)

    def pending(self) -> int:
        return self._batches.queued() + len(self._checking)

    def idle(self) -> defer.Deferred[None]:
        """Fires once everything appended so far is committed (or failed)."""
        if not self._batches.running and not self.pending():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(d)
        return d

    def _maybe_idle(self) -> None:
        if self._batches.running or self.pending():
            return
        if self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for w in waiters:
                self._clock.callLater(0, w.callback, None)
