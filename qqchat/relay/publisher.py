"""PUBLISH on a connection of its own, written as raw RESP.

Every cross-node push is one PUBLISH. Through txredisapi each cost a Deferred,
an inlineCallbacks hop, per-argument formatting and a write-interest round trip
of its own: a quarter of the sending node's busy time. Here a command is one
bytes template and one ``transport.write``; Twisted coalesces the writes of a
reactor turn (a whole committed batch) into one ``send``.

Redis answers in order, one reply line per command, so the protocol keeps what it
is owed in a queue: publishes are not sent before Redis has accepted the AUTH; a
PING every few seconds that goes unanswered drops a dead connection; a publish
not yet answered when the connection is lost is sent again on the next (a
recipient's session drops a message it has seen; an event may come twice); and
``publish`` refuses (the caller queues) while the socket's buffer is full or too
many replies are owed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import protocol, task
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger

#: seconds between PINGs, and how long one may go unanswered before the connection
#: is taken for dead and dropped
PING_INTERVAL = 5.0
PING_TIMEOUT = 10.0
#: replies owed before ``publish`` refuses (it starts again below half)
MAX_IN_FLIGHT = 10_000

_AUTH = object()
_PING = object()
Entry = tuple[bytes, bytes]


def resp_command(*args: bytes) -> bytes:
    """One Redis command in RESP, as Redis reads it from any client."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)


class PublishProtocol(protocol.Protocol):
    log = Logger()

    def __init__(self, password: str | None, on_ready: Callable[[PublishProtocol], None],
                 on_lost: Callable[[PublishProtocol], None], clock: IReactorTime,
                 on_writable: Callable[[], None] = lambda: None) -> None:
        self._password = password
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._on_writable = on_writable
        self._clock = clock
        self._buffer = b""
        #: what each reply still owed answers, in order: _AUTH, _PING or a publish
        self.owed: deque[object] = deque()
        self.replies = 0
        #: Redis accepted the connection (and the password): publishes may go
        self.ready = False
        #: the socket's buffer is full (IPushProducer)
        self.paused = False
        self._full = False
        self._ping_sent: float | None = None
        self._pinger = task.LoopingCall(self._ping)
        self._pinger.clock = clock

    # -- the connection -----------------------------------------------------

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self._pinger.start(PING_INTERVAL, now=False)
        if self._password:
            self.owed.append(_AUTH)
            self.transport.write(resp_command(b"AUTH", self._password.encode()))
        else:
            self._become_ready()

    def _become_ready(self) -> None:
        self.ready = True
        self._on_ready(self)

    def connectionLost(self, reason: object = protocol.connectionDone) -> None:
        self.ready = False
        if self._pinger.running:
            self._pinger.stop()
        self._on_lost(self)

    @property
    def writable(self) -> bool:
        return self.ready and not self.paused and not self._full

    def publish(self, channel: bytes, payload: bytes) -> None:
        self.owed.append((channel, payload))
        self.transport.write(b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
                             % (len(channel), channel, len(payload), payload))
        if len(self.owed) >= MAX_IN_FLIGHT:
            self._full = True

    def unanswered(self) -> list[Entry]:
        """The publishes Redis has not answered (they may not have reached it)."""
        return [e for e in self.owed if isinstance(e, tuple)]

    # -- IPushProducer: the transport says when its buffer is full --------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        was = self.writable
        self.paused = False
        if not was and self.writable:
            self._on_writable()

    def stopProducing(self) -> None:
        self.paused = True

    # -- replies --------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # PUBLISH answers an integer, AUTH and PING a status: every reply is one line
        lines = (self._buffer + data).split(b"\r\n")
        self._buffer = lines.pop()
        self.replies += len(lines)
        owed = self.owed
        for line in lines:
            entry = owed.popleft() if owed else None
            if entry is _PING:
                self._ping_sent = None
            elif entry is _AUTH:
                if line.startswith(b"+"):
                    self._become_ready()
                    continue
                self.log.warn("Redis refused the password: {error}",
                              error=line[1:].decode(errors="replace"))
                self.transport.loseConnection()
                return
            if line.startswith(b"-"):
                self.log.warn("Redis refused a publish: {error}",
                              error=line[1:].decode(errors="replace"))
                if b"NOAUTH" in line or b"WRONGPASS" in line:
                    self.transport.loseConnection()
                    return
        if self._full and len(owed) < MAX_IN_FLIGHT // 2:
            self._full = False
            if self.writable:
                self._on_writable()

    def _ping(self) -> None:
        """Find a dead connection (a peer gone without a FIN): nothing else would."""
        if self._ping_sent is not None:
            if self._clock.seconds() - self._ping_sent >= PING_TIMEOUT:
                self.log.warn("Redis did not answer a PING for {s} s: reconnecting the "
                              "publisher", s=PING_TIMEOUT)
                self._ping_sent = None
                self.transport.abortConnection()
            return
        self._ping_sent = self._clock.seconds()
        self.owed.append(_PING)
        self.transport.write(b"*1\r\n$4\r\nPING\r\n")


class _PublishFactory(protocol.Factory):
    noisy = False

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    def buildProtocol(self, addr: object) -> PublishProtocol:
        p = self.publisher
        return PublishProtocol(p.password, p._ready, p._lost, p.clock, p._on_writable)


class Publisher:
    """Keeps one publishing connection up (reconnecting with a short backoff)."""

    def __init__(self, endpoint: IStreamClientEndpoint, password: str | None,
                 on_connected: Callable[[], None], clock: Any = None,
                 retry: Callable[[int], float] | None = None) -> None:
        self.password = password
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock: IReactorTime = clock
        #: called once publishes may go again (connected, or the socket drained)
        self._on_writable = on_connected
        self._proto: PublishProtocol | None = None
        #: publishes a lost connection left unanswered, sent first on the next
        self._resend: list[Entry] = []
        self._service = ClientService(endpoint, _PublishFactory(self),
                                      retryPolicy=retry or backoffPolicy(maxDelay=2.0),
                                      clock=clock)

    @property
    def connected(self) -> bool:
        return self._proto is not None

    @property
    def protocol(self) -> PublishProtocol | None:
        """The connection publishes go on, once Redis has accepted it."""
        return self._proto

    def publish(self, channel: bytes, payload: bytes) -> bool:
        """Write one PUBLISH; False (nothing written) while there is no connection
        ready, or it cannot take more for now: the caller keeps it until
        ``on_connected`` is called again."""
        proto = self._proto
        if proto is None or not proto.writable:
            return False
        proto.publish(channel, payload)
        return True

    def start(self) -> None:
        self._service.startService()

    def stop(self) -> object:
        return self._service.stopService()

    def _ready(self, proto: PublishProtocol) -> None:
        self._proto = proto
        resend, self._resend = self._resend, []
        for channel, payload in resend:
            proto.publish(channel, payload)
        if resend:
            self._proto.log.info("published again {n} publishes a lost connection left "
                                 "unanswered", n=len(resend))
        if proto.writable:
            self._on_writable()

    def _lost(self, proto: PublishProtocol) -> None:
        if self._proto is proto:
            self._proto = None
        self._resend.extend(proto.unanswered())
        del self._resend[:-MAX_IN_FLIGHT]
