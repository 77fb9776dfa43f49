"""One transaction for many requests: a queue, and one batch in flight at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

T = TypeVar("T")
R = TypeVar("R")

#: (queued item, the Deferred its caller holds)
Entry = tuple[T, "defer.Deferred[Any]"]


class Batcher(Generic[T, R]):
    """Collects items and hands them to ``run`` in batches, one batch in flight at a time.

    Whatever arrives while a batch runs goes into the next one, so under load each
    batch carries many items while a lone item still goes at once (on the next
    reactor turn, or ``min_interval`` after the previous batch began). ``run``
    answers one result per item; each caller's Deferred fires with its own, in
    queue order, after the batch is done.

    ``take`` chooses a batch from the queue (by default the first ``max_batch``).
    By default the next batch is scheduled before the callers' Deferreds fire;
    with ``chain`` they fire first and the next batch (with whatever they queued)
    starts at once, in the same turn. A failure in handling a batch's outcome is
    logged at once and fails every caller still waiting, so none waits for ever.
    """

    _logger = Logger()

    def __init__(self, clock: IReactorTime,
                 run: Callable[[list[T], float], defer.Deferred[list[R]]], *,
                 what: str, max_batch: int | None = None, min_interval: float = 0.0,
                 take: Callable[[list[Entry[T]]], tuple[list[Entry[T]], list[Entry[T]]]]
                 | None = None,
                 chain: bool = False, on_done: Callable[[], None] | None = None,
                 on_idle: Callable[[], None] | None = None) -> None:
        self._clock = clock
        self._run = run
        #: logged when handling a batch's outcome fails
        self._failure_message = f"handling the outcome of {what} failed"
        self._max_batch = max_batch
        self._min_interval = min_interval
        self._take = take or self._take_first
        self._chain = chain
        #: called when a batch is done (before its callers hear), and when idle
        self._on_done = on_done
        self._on_idle = on_idle
        self._queue: list[Entry[T]] = []
        self._scheduled: IDelayedCall | None = None
        self.running = False
        self.last_start = float("-inf")

    def add(self, item: T) -> defer.Deferred[R]:
        d: defer.Deferred[R] = defer.Deferred()
        self._queue.append((item, d))
        self._schedule()
        return d

    def queued(self) -> int:
        return len(self._queue)

    def _take_first(self, queue: list[Entry[T]]) -> tuple[list[Entry[T]], list[Entry[T]]]:
        if self._max_batch is None:
            return queue, []
        return queue[: self._max_batch], queue[self._max_batch :]

    def _schedule(self) -> None:
        if self._scheduled is None and not self.running:
            delay = self.last_start + self._min_interval - self._clock.seconds()
            self._scheduled = self._clock.callLater(max(delay, 0.0), self._flush)

    def _flush(self) -> None:
        self._scheduled = None
        if not self._queue:
            return
        batch, self._queue = self._take(self._queue)
        self.running = True
        started = self.last_start = self._clock.seconds()
        d = self._run([item for item, _ in batch], started)
        d.addCallbacks(self._ran, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))
        d.addErrback(self._unexpected, batch)

    def _ran(self, results: list[R], batch: list[Entry[T]]) -> None:
        if not self._chain:
            self._done()
        for (_, d), result in zip(batch, results, strict=True):
            d.callback(result)
        if self._chain:
            self._done()

    def _failed(self, failure: Failure, batch: list[Entry[T]]) -> None:
        if not self._chain:
            self._done()
        for _, d in batch:
            d.errback(failure)
        if self._chain:
            self._done()

    def _unexpected(self, failure: Failure, batch: list[Entry[T]]) -> None:
        """The last errback: a bug in handling an outcome is logged now (not when the
        Deferred is garbage collected, if ever)."""
        self._logger.failure(self._failure_message, failure)
        if self._chain:
            self.running = False
        for _, d in batch:
            if not d.called:
                d.errback(failure)
        if self._chain:
            self._done()

    def _done(self) -> None:
        self.running = False
        if self._on_done is not None:
            self._on_done()
        if self._queue:
            if self._chain:
                self._flush()
            else:
                self._schedule()
        elif self._on_idle is not None:
            self._on_idle()
