"""A timer of the storage layer: periodic work that needs the schema in place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime


class ReadyTimer(TimerService):
    """Twisted's ``TimerService`` (``call`` every ``step`` seconds, the first at once;
    stopping waits for a call in hand), whose calls begin only once ``after`` fires
    (``DatabaseService.ready``: the schema, and so the tables they use, in place)
    rather than when the service starts."""

    def __init__(self, step: float, call: Callable[[], Any], clock: IReactorTime,
                 after: defer.Deferred[None] | None = None) -> None:
        super().__init__(step, call)
        self.clock = clock
        self._after = after
        self._begun = False

    def startService(self) -> None:
        Service.startService(self)
        if self._after is None:
            self._begin()
        else:
            self._after.addCallback(self._begin)

    def _begin(self, result: Any = None) -> Any:
        if self.running and not self._begun:
            self._begun = True
            TimerService.startService(self)
        return result

    def stopService(self) -> defer.Deferred[None] | None:
        if not self._begun:
            return Service.stopService(self)  # type: ignore[no-any-return]
        self._begun = False
        return TimerService.stopService(self)  # type: ignore[no-any-return]
