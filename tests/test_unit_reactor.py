"""The streamlined epoll pass handles events as Twisted's does, minus the logging context."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import pytest
from twisted.internet import epollreactor, selectreactor
from twisted.python.failure import Failure

from qqchat.net.reactor import streamline


class Reader:
    """A socket end registered for reading; records what the reactor did with it."""

    def __init__(self, sock: socket.socket, fail: bool = False) -> None:
        self.sock = sock
        self.fail = fail
        self.read: list[bytes] = []
        self.lost: list[Failure] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "Reader"

    def doRead(self) -> Any:
        data = self.sock.recv(100)
        if self.fail:
            raise RuntimeError("protocol bug")
        self.read.append(data)
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


@pytest.fixture
def pairs() -> Any:
    made: list[socket.socket] = []

    def make() -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        made.extend((a, b))
        return a, b

    yield make
    for s in made:
        s.close()


@pytest.mark.logged_errors_ok
def test_events_reach_their_readers_and_a_failing_one_is_dropped(pairs: Any) -> None:
    reactor = epollreactor.EPollReactor()
    try:
        assert streamline(reactor)
        assert reactor.doIteration.__func__ is not epollreactor.EPollReactor.doIteration
        (a, a_peer), (b, b_peer) = pairs(), pairs()
        good, bad = Reader(a), Reader(b, fail=True)
        reactor.addReader(good)
        reactor.addReader(bad)
        a_peer.send(b"hello")
        b_peer.send(b"boom")
        reactor.doIteration(1.0)
        assert good.read == [b"hello"] and not good.lost
        # the exception became a lost connection, as in Twisted's own pass
        assert bad.read == [] and len(bad.lost) == 1
        assert bad not in reactor.getReaders()
        a_peer.send(b"again")
        reactor.doIteration(1.0)
        assert good.read == [b"hello", b"again"]
    finally:
        reactor.removeAll()
        reactor._poller.close()


def test_other_reactors_are_left_alone() -> None:
    reactor = selectreactor.SelectReactor()
    before = reactor.doIteration
    assert not streamline(reactor)
    assert reactor.doIteration == before


def test_a_thread_still_wakes_the_streamlined_reactor() -> None:
    reactor = epollreactor.EPollReactor()
    try:
        assert streamline(reactor)
        woke: list[str] = []
        worker = threading.Thread(target=reactor.callFromThread, args=(woke.append, "woke"))
        worker.start()
        worker.join()
        # the waker's byte makes the poll return at once, well before its timeout
        started = time.monotonic()
        reactor.doIteration(30.0)
        reactor.runUntilCurrent()
        assert woke == ["woke"] and time.monotonic() - started < 10
        # a full pipe is not an error: the reactor wakes all the same
        os.set_blocking(reactor.waker.o, False)
        for _ in range(100_000):
            reactor.waker.wakeUp()
    finally:
        reactor.removeAll()
        reactor._poller.close()
