"""The listening service: waits for the database, then accepts; the steps of a graceful
stop, which the daemon takes in order (``app.ChatDaemon.stopService``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger

from qqchat.errors import StartupError
from qqchat.net.connection import ConnectionFactory

#: another edge: its name, where it listens, and the factory that listens there
Edge = tuple[str, IStreamServerEndpoint, IProtocolFactory]


class ChatListenerService(Service):
    """Starts listening once ``ready`` fires, so no client meets a half-built server.

    It listens on ``endpoint`` with ``factory`` (TCP), and on each of ``edges``
    (the web port), whose connections live in the same ``factory``: one graceful
    stop for every client, whatever edge it came by.

    If startup fails (say the database is unreachable), it logs why and calls
    ``on_fatal`` (the daemon stops the reactor) rather than running without storage.
    """

    log = Logger()

    def __init__(self, endpoint: IStreamServerEndpoint, factory: ConnectionFactory,
                 ready: defer.Deferred[Any], clock: IReactorTime,
                 on_fatal: Any = None, edges: Sequence[Edge] = ()
                 ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.ready = ready
        self.clock = clock
        self.on_fatal = on_fatal
        self.edges = [("tcp", endpoint, factory), *edges]
        self.port: IListeningPort | None = None
        self.ports: dict[str, IListeningPort] = {}
        #: fires with the TCP port once every edge listens
        self.listening: defer.Deferred[IListeningPort] = defer.Deferred()
        #: per edge name, fires with its port once every edge listens
        self.edge_listening: dict[str, defer.Deferred[IListeningPort]] = {
            name: defer.Deferred() for name, _, _ in self.edges}

    def startService(self) -> None:
        super().startService()
        d = self.ready
        d.addCallback(lambda _: self._listen_all())
        d.addCallbacks(self._listening, self._failed)

    async def _listen(self) -> dict[str, IListeningPort]:
        ports: dict[str, IListeningPort] = {}
        try:
            for name, endpoint, factory in self.edges:
                ports[name] = await endpoint.listen(factory)
        except BaseException:
            for port in ports.values():
                port.stopListening()
            raise
        return ports

    def _listen_all(self) -> defer.Deferred[dict[str, IListeningPort]]:
        return defer.Deferred.fromCoroutine(self._listen())

    def _listening(self, ports: dict[str, IListeningPort]) -> None:
        self.ports = ports
        self.port = ports["tcp"]
        for name, port in ports.items():
            addr = port.getHost()
            self.log.info("qqchat listening on {host}:{port} ({edge})",
                          host=getattr(addr, "host", "?"), port=getattr(addr, "port", "?"),
                          edge=name)
        for name, port in ports.items():
            self.edge_listening[name].callback(port)
        self.listening.callback(self.port)

    def _failed(self, failure: Any) -> None:
        if failure.check(StartupError):
            # an operator's problem with a clear message, not a bug: no traceback
            self.log.error("qqchat could not start: {why}", why=failure.getErrorMessage())
        else:
            self.log.failure("qqchat could not start", failure)
        self.listening.errback(failure)
        self.listening.addErrback(lambda _: None)
        for d in self.edge_listening.values():
            d.errback(failure)
            d.addErrback(lambda _: None)
        if self.on_fatal is not None:
            self.on_fatal()

    def stopService(self) -> defer.Deferred[Any]:
        """Stops accepting. The graceful stop around it (requests in hand, goodbyes,
        logouts) is the daemon's: ``app.ChatDaemon.stopService``."""
        super().stopService()
        return self.stop_accepting()

    # -- the steps of a graceful stop, in the order the daemon takes them --

    def stop_accepting(self) -> defer.Deferred[Any]:
        """No new clients on any edge; plain HTTP connections of the web edge, which
        have nothing in flight worth a goodbye, are dropped."""
        ports, self.ports = self.ports, {}
        d = defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in ports.values()])
        for _, _, factory in self.edges[1:]:
            drop_idle = getattr(factory, "drop_idle", None)
            if drop_idle is not None:
                drop_idle()
        return d

    def finish_requests(self) -> defer.Deferred[Any]:
        """Read no more requests; fires once those in hand are answered."""
        return defer.DeferredList([p.stop_reading() for p in list(self.factory.live)])

    def say_goodbye(self) -> defer.Deferred[Any]:
        """Tell every client ``server_shutdown`` and close; fires once all are closed
        (each cut after the connection's grace period if it does not read)."""
        closed = []
        for p in list(self.factory.live):
            d: defer.Deferred[None] = defer.Deferred()
            p.notifyOnClose(d)
            closed.append(d)
            p.send_frame({"type": "server_shutdown"})
            p.close()
        return defer.DeferredList(closed)
