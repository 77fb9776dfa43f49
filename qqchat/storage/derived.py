"""Keeps the conversation list caught up where the batches leave it to a bulk step
(``Engine.derives_later``): readers catch up before they read anyway, and this keeps
each catch-up small, so that none of them waits long."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from qqchat.storage.timer import ReadyTimer

#: seconds between catch-ups
EVERY = 1.0


class DerivedService(ReadyTimer):
    """Runs ``derive`` (``LogStore.derive_conversations``) every ``every`` seconds once
    ``after`` fired (the schema in place); a failure is logged and the next run tries
    again. Stopping waits for a run in hand, so the pool is not closed under it."""

    log = Logger()

    def __init__(self, derive: Callable[[], defer.Deferred[None]], clock: IReactorTime,
                 every: float = EVERY, after: defer.Deferred[None] | None = None) -> None:
        super().__init__(every, self._run, clock, after)
        self._derive = derive

    def _run(self) -> defer.Deferred[None]:
        d = self._derive()
        d.addErrback(lambda f: self.log.warn("catching up the conversation list failed: "
                                             "{e}", e=f.getErrorMessage()))
        return d
