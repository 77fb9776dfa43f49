"""Keeps the conversation list caught up where the batches leave it to a bulk step
(``Engine.derives_later``): readers catch up before they read anyway, and this keeps
each catch-up small, so that none of them waits long."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

#: seconds between catch-ups
EVERY = 1.0


class DerivedService(Service):
    """Runs ``derive`` (``LogStore.derive_conversations``) every ``every`` seconds once
    ``after`` fired (the schema in place); a failure is logged and the next run tries
    again. Stopping waits for a run in hand, so the pool is not closed under it."""

    log = Logger()

    def __init__(self, derive: Callable[[], defer.Deferred[None]], clock: IReactorTime,
                 every: float = EVERY, after: defer.Deferred[None] | None = None) -> None:
        self._derive = derive
        self._loop = task.LoopingCall(self._run)
        self._loop.clock = clock
        self._every = every
        self._after = after
        self._running: defer.Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        if self._after is None:
            self._start()
        else:
            self._after.addCallback(self._start)

    def _start(self, result: Any = None) -> Any:
        if self.running and not self._loop.running:
            self._loop.start(self._every, now=False)
        return result

    def _run(self) -> defer.Deferred[None]:
        d = self._running = self._derive()
        d.addErrback(lambda f: self.log.warn("catching up the conversation list failed: "
                                             "{e}", e=f.getErrorMessage()))
        d.addBoth(self._ran)
        return d

    def _ran(self, result: Any) -> None:
        self._running = None

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._running is not None:
            done: defer.Deferred[None] = defer.Deferred()
            self._running.addBoth(lambda r: (done.callback(None), r)[1])
            return done
        return None
