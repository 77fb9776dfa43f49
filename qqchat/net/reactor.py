"""A cheaper event loop pass for Twisted's epoll reactor.

Twisted runs every socket event inside ``log.callWithLogger``, which builds a
logging context (a dict copy and two context-stack pushes) so that legacy
``log.msg`` calls made while handling the event carry the connection's log
prefix. qqchat logs through ``twisted.logger``, which never reads that context,
and at one event per chat message the wrapper was a fifth of the reactor
thread's Python time. ``streamline`` swaps in a poll pass without it; events
are otherwise handled exactly as Twisted does (``_doReadOrWrite``, which
catches and logs a protocol's exceptions and drops the connection).
"""

from __future__ import annotations

import errno
import types
from typing import Any

from twisted.logger import Logger

_log = Logger(namespace="qqchat.net.reactor")


def _poll(self: Any, timeout: float | None) -> None:
    """``EPollReactor.doPoll`` minus the per-event logging context."""
    if timeout is None:
        timeout = -1
    try:
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    drdw = self._doReadOrWrite
    selectables = self._selectables
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        try:
            drdw(selectable, fd, event)
        except Exception:
            # what callWithLogger would have caught: keep serving the others
            _log.failure("unhandled error handling {selectable}", selectable=selectable)


def streamline(reactor: Any) -> bool:
    """Use the cheaper poll pass if ``reactor`` is Twisted's epoll reactor, unchanged.

    Returns whether it did; any other reactor (or a subclass with its own
    ``doPoll``) is left alone.
    """
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # not Linux
        return False
    if not isinstance(reactor, EPollReactor):
        return False
    if type(reactor).doIteration is not EPollReactor.doIteration:
        return False
    reactor.doIteration = types.MethodType(_poll, reactor)
    return True
