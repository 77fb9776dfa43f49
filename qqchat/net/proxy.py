"""The PROXY protocol (v1 and v2, as nginx and HAProxy send it) in front of the chat
protocol: behind a proxy, every connection comes from the proxy's address, and the
limits per client address would count the whole service as one client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.logger import Logger
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

#: seconds a connection may take to send its PROXY header
HEADER_TIMEOUT = 10.0
#: who may send the header unless --proxy-from says otherwise
DEFAULT_TRUSTED = "127.0.0.1"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(spec: str) -> list[Network]:
    """``--proxy-from``: addresses or networks, comma-separated ("127.0.0.1,10.0.0.0/8")."""
    out: list[Network] = []
    for part in spec.split(","):
        if part.strip():
            try:
                out.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise ValueError(f"not an address or network: {part.strip()!r}") from None
    return out


def _trusted(host: str, networks: Sequence[Network]) -> bool:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


class _HeaderFirst(HAProxyProtocolWrapper):
    """Starts the chat protocol only once the header has named the client.

    Twisted's wrapper starts it at once, when ``getPeer`` still gives the proxy's
    address: the connection would be counted against the proxy.
    """

    log = Logger()

    def makeConnection(self, transport: ITransport) -> None:
        # ProtocolWrapper.makeConnection, minus starting the wrapped protocol
        directlyProvides(self, providedBy(transport))
        self.transport = transport
        self.connected = True
        self.factory.registerProtocol(self)
        peer = getattr(transport.getPeer(), "host", "?")
        if not _trusted(peer, self.factory.trusted):
            # anyone else could name any address and escape every per-address limit
            self.log.info("refused {peer}: not a trusted proxy (--proxy-from)", peer=peer)
            self._proxyInfo = None
            self._deadline = None
            transport.abortConnection()
            return
        clock: IReactorTime = self.factory.clock
        self._deadline = clock.callLater(HEADER_TIMEOUT, transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        if self._deadline is None:
            return  # refused: nothing it says is read
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
        if self._deadline is not None and self._deadline.active():
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

    def __init__(self, wrapped: IProtocolFactory, clock: IReactorTime,
                 trusted: Sequence[Network] | None = None) -> None:
        super().__init__(wrapped)
        self.clock = clock
        self.trusted = list(trusted) if trusted is not None else parse_networks(
            DEFAULT_TRUSTED)


@implementer(IStreamServerEndpoint)
class ProxyProtocolEndpoint:
    """Listens on ``wrapped``; each connection must start with a PROXY header."""

    def __init__(self, wrapped: IStreamServerEndpoint, clock: IReactorTime,
                 trusted: Sequence[Network] | None = None) -> None:
        self.wrapped = wrapped
        self.clock = clock
        self.trusted = trusted

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        result: Any = self.wrapped.listen(HeaderFirstFactory(factory, self.clock,
                                                             self.trusted))
        return result
