"""A cheaper event loop pass for Twisted's epoll reactor.

Twisted runs every socket event inside ``log.callWithLogger``, which builds a
logging context (a dict copy and two context-stack pushes) so that legacy
``log.msg`` calls made while handling the event carry the connection's log
prefix. qqchat logs through ``twisted.logger``, which never reads that context,
and at one event per chat message the wrapper was a fifth of the reactor
thread's Python time. ``streamline`` swaps in a poll pass without it; events
are otherwise handled exactly as Twisted does (``_doReadOrWrite``, which
catches and logs a protocol's exceptions and drops the connection).

It also gives the reactor's waker a plain ``wakeUp``. The database thread wakes
the reactor once per transaction (``callFromThread``), and Twisted's waker
reaches ``os.write`` through ``twisted.python.util``, a module behind a
deprecation proxy whose every attribute read builds a helper object: a tenth
of the daemon's Python time under chat load went there.
"""

from __future__ import annotations

import contextlib
import errno
import os
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


def _wake_up(self: Any) -> None:
    """``_UnixWaker.wakeUp`` without the proxy: one byte into the pipe, unless it is
    full already (then the reactor wakes anyway). ``os.write`` retries EINTR."""
    if self.o is not None:
        with contextlib.suppress(BlockingIOError):
            os.write(self.o, b"x")


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
    from twisted.internet._signals import _UnixWaker

    if type(reactor.waker) is _UnixWaker:
        reactor.waker.wakeUp = types.MethodType(_wake_up, reactor.waker)
    return True
