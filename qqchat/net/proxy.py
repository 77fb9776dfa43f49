"""The PROXY protocol (v1 and v2, as nginx and HAProxy send it) in front of the chat
protocol: behind a proxy, every connection comes from the proxy's address, and the
limits per client address would count the whole service as one client.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

#: seconds a connection may take to send its PROXY header
HEADER_TIMEOUT = 10.0


class _HeaderFirst(HAProxyProtocolWrapper):
    """Starts the chat protocol only once the header has named the client.

    Twisted's wrapper starts it at once, when ``getPeer`` still gives the proxy's
    address: the connection would be counted against the proxy.
    """

    def makeConnection(self, transport: ITransport) -> None:
        # ProtocolWrapper.makeConnection, minus starting the wrapped protocol
        directlyProvides(self, providedBy(transport))
        self.transport = transport
        self.connected = True
        self.factory.registerProtocol(self)
        clock: IReactorTime = self.factory.clock
        self._deadline = clock.callLater(HEADER_TIMEOUT, transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        if self._proxyInfo is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        # feed the parser through the parent, with the chat protocol not started yet
        # and its first bytes held back until it is
        held: list[bytes] = []
        real, self.wrappedProtocol = self.wrappedProtocol, _Hold(held)
        try:
            super().dataReceived(data)
        finally:
            self.wrappedProtocol = real
        if self._proxyInfo is not None and self.connected:
            self._deadline.cancel()
            real.makeConnection(self)
            for chunk in held:
                real.dataReceived(chunk)

    def connectionLost(self, reason: Failure) -> None:
        if self._deadline.active():
            self._deadline.cancel()
        if self._proxyInfo is None:
            self.factory.unregisterProtocol(self)  # the chat protocol never started
            return
        super().connectionLost(reason)


class _Hold:
    """Stands in for the chat protocol while the header is parsed."""

    def __init__(self, held: list[bytes]) -> None:
        self.held = held

    def dataReceived(self, data: bytes) -> None:
        self.held.append(data)


class HeaderFirstFactory(HAProxyWrappingFactory):
    protocol = _HeaderFirst

    def __init__(self, wrapped: IProtocolFactory, clock: IReactorTime) -> None:
        super().__init__(wrapped)
        self.clock = clock


@implementer(IStreamServerEndpoint)
class ProxyProtocolEndpoint:
    """Listens on ``wrapped``; each connection must start with a PROXY header."""

    def __init__(self, wrapped: IStreamServerEndpoint, clock: IReactorTime) -> None:
        self.wrapped = wrapped
        self.clock = clock

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        result: Any = self.wrapped.listen(HeaderFirstFactory(factory, self.clock))
        return result
