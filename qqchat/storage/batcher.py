"""One transaction for many requests: a queue, and one batch in flight at a time (or a
few, where their transactions may overlap)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

T = TypeVar("T")
R = TypeVar("R")



class Waiter(Protocol):
    """Who hears an item's result: a Deferred, or any object that answers the same
    three (the hot path's requests, which need no Deferred of their own)."""

    @property
    def called(self) -> bool: ...

    def callback(self, result: Any) -> Any: ...

    def errback(self, fail: Failure) -> Any: ...


#: (queued item, who hears its result)
Entry = tuple[T, Waiter]


class _Flight(Generic[T]):
    """A batch handed to ``run``, and its outcome once known."""

    __slots__ = ("batch", "done", "failure", "results")

    def __init__(self, batch: list[Entry[T]]) -> None:
        self.batch = batch
        self.done = False
        self.results: list[Any] | None = None
        self.failure: Failure | None = None


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

    With ``max_in_flight`` above 1 (not with ``chain``), the next batch may start
    while earlier ones run; callers still hear in queue order: a batch that is done
    before an earlier one waits for it.
    """

    _logger = Logger()

    def __init__(self, clock: IReactorTime,
                 run: Callable[[list[T], float], defer.Deferred[list[R]]], *,
                 what: str, max_batch: int | None = None, min_interval: float = 0.0,
                 take: Callable[[list[Entry[T]]], tuple[list[Entry[T]], list[Entry[T]]]]
                 | None = None,
                 chain: bool = False, on_done: Callable[[], None] | None = None,
                 on_idle: Callable[[], None] | None = None, max_in_flight: int = 1) -> None:
        if max_in_flight < 1 or (chain and max_in_flight != 1):
            raise ValueError("max_in_flight: at least 1, and 1 with chain")
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
        self._max_in_flight = max_in_flight
        #: batches handed to ``run`` whose callers have not heard yet, oldest first,
        #: and how many of them ``run`` has not answered
        self._flights: deque[_Flight[T]] = deque()
        self._active = 0
        #: a batch is in flight (or done, its callers not yet told)
        self.running = False
        self.last_start = float("-inf")

    def add(self, item: T) -> defer.Deferred[R]:
        d: defer.Deferred[R] = defer.Deferred()
        self.add_waiter(item, d)
        return d

    def add_waiter(self, item: T, waiter: Waiter) -> None:
        """Queue ``item``; ``waiter`` hears its result as a Deferred would."""
        self._queue.append((item, waiter))
        if self._scheduled is None:
            self._schedule()

    def queued(self) -> int:
        return len(self._queue)

    def _take_first(self, queue: list[Entry[T]]) -> tuple[list[Entry[T]], list[Entry[T]]]:
        if self._max_batch is None:
            return queue, []
        return queue[: self._max_batch], queue[self._max_batch :]

    def _schedule(self) -> None:
        if self._scheduled is None and self._active < self._max_in_flight and not (
                self._chain and self.running):
            delay = self.last_start + self._min_interval - self._clock.seconds()
            self._scheduled = self._clock.callLater(max(delay, 0.0), self._flush)

    def _flush(self) -> None:
        self._scheduled = None
        if not self._queue:
            return
        batch, self._queue = self._take(self._queue)
        flight: _Flight[T] = _Flight(batch)
        self._flights.append(flight)
        self._active += 1
        self.running = True
        started = self.last_start = self._clock.seconds()
        d = self._run([item for item, _ in batch], started)
        d.addCallbacks(self._ran, self._failed, callbackArgs=(flight,), errbackArgs=(flight,))
        d.addErrback(self._unexpected, flight)
        if self._queue:
            self._schedule()

    def _ran(self, results: list[R], flight: _Flight[T]) -> None:
        flight.results = results
        self._finish(flight)

    def _failed(self, failure: Failure, flight: _Flight[T]) -> None:
        flight.failure = failure
        self._finish(flight)

    def _unexpected(self, failure: Failure, flight: _Flight[T]) -> None:
        """The last errback: a bug in handling an outcome is logged now (not when the
        Deferred is garbage collected, if ever)."""
        self._logger.failure(self._failure_message, failure)
        if not flight.done:
            flight.results, flight.failure = None, failure
            self._finish(flight)
            return
        for _, d in flight.batch:
            if not d.called:
                d.errback(failure)

    def _finish(self, flight: _Flight[T]) -> None:
        """``flight`` has its outcome: tell the callers of every batch that is done and
        has none still running before it."""
        flight.done = True
        self._active -= 1
        flights = self._flights
        while flights and flights[0].done:
            done = flights.popleft()
            if not self._chain:
                self._done()
            self._tell(done)
            if self._chain:
                self._done()

    def _tell(self, flight: _Flight[T]) -> None:
        failure = flight.failure
        if failure is None:
            try:
                for (_, d), result in zip(flight.batch, flight.results or (), strict=True):
                    d.callback(result)
                return
            except Exception:
                failure = Failure()
                self._logger.failure(self._failure_message, failure)
        for _, d in flight.batch:
            if not d.called:
                d.errback(failure)

    def _done(self) -> None:
        self.running = bool(self._flights)
        if self._on_done is not None:
            self._on_done()
        if self._queue:
            if self._chain:
                self._flush()
            else:
                self._schedule()
        elif not self.running and self._on_idle is not None:
            self._on_idle()
