"""PUBLISH on a connection of its own, written as raw RESP.

Every cross-node push is one PUBLISH. Through txredisapi each cost a Deferred,
an inlineCallbacks hop, per-argument formatting and a write-interest round trip
of its own: a quarter of the sending node's busy time. Here a command is one
bytes template and one ``transport.write``; Twisted coalesces the writes of a
reactor turn (a whole committed batch) into one ``send``. Replies are integers,
read only to count them and to log errors.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import protocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger


def resp_command(*args: bytes) -> bytes:
    """One Redis command in RESP, as Redis reads it from any client."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)


class PublishProtocol(protocol.Protocol):
    log = Logger()

    def __init__(self, password: str | None, on_ready: Callable[[PublishProtocol], None],
                 on_lost: Callable[[PublishProtocol], None]) -> None:
        self._password = password
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._buffer = b""
        self.replies = 0

    def connectionMade(self) -> None:
        if self._password:
            # Redis answers in order, so publishes may follow the AUTH at once
            self.transport.write(resp_command(b"AUTH", self._password.encode()))
        self._on_ready(self)

    def publish(self, channel: bytes, payload: bytes) -> None:
        self.transport.write(b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
                             % (len(channel), channel, len(payload), payload))

    def dataReceived(self, data: bytes) -> None:
        # PUBLISH answers an integer, AUTH a status: every reply is one line
        lines = (self._buffer + data).split(b"\r\n")
        self._buffer = lines.pop()
        self.replies += len(lines)
        for line in lines:
            if line.startswith(b"-"):
                self.log.warn("Redis refused a publish: {error}",
                              error=line[1:].decode(errors="replace"))
                if b"NOAUTH" in line or b"WRONGPASS" in line:
                    self.transport.loseConnection()

    def connectionLost(self, reason: object = protocol.connectionDone) -> None:
        self._on_lost(self)


class _PublishFactory(protocol.Factory):
    noisy = False

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    def buildProtocol(self, addr: object) -> PublishProtocol:
        p = self.publisher
        return PublishProtocol(p.password, p._ready, p._lost)


class Publisher:
    """Keeps one publishing connection up (reconnecting with a short backoff)."""

    def __init__(self, endpoint: IStreamClientEndpoint, password: str | None,
                 on_connected: Callable[[], None], clock: object = None) -> None:
        self.password = password
        self._on_connected = on_connected
        self._proto: PublishProtocol | None = None
        kw = {"clock": clock} if clock is not None else {}
        self._service = ClientService(endpoint, _PublishFactory(self),
                                      retryPolicy=backoffPolicy(maxDelay=2.0), **kw)

    @property
    def connected(self) -> bool:
        return self._proto is not None

    def publish(self, channel: bytes, payload: bytes) -> bool:
        """Write one PUBLISH; False (nothing written) while there is no connection."""
        proto = self._proto
        if proto is None:
            return False
        proto.publish(channel, payload)
        return True

    def start(self) -> None:
        self._service.startService()

    def stop(self) -> object:
        return self._service.stopService()

    def _ready(self, proto: PublishProtocol) -> None:
        self._proto = proto
        self._on_connected()

    def _lost(self, proto: PublishProtocol) -> None:
        if self._proto is proto:
            self._proto = None
