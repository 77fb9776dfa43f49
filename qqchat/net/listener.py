"""The listening service: waits for the database, then accepts; on stop, says goodbye."""

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
                 on_fatal: Any = None, grace: float = 5.0, edges: Sequence[Edge] = ()
                 ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.ready = ready
        self.clock = clock
        self.on_fatal = on_fatal
        self.grace = grace
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

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Graceful stop: no new clients; finish the requests in hand and commit them;
        tell every client ``server_shutdown`` and close; let logouts reach storage."""
        super().stopService()
        ports, self.ports = self.ports, {}
        yield defer.DeferredList([defer.maybeDeferred(p.stopListening)
                                  for p in ports.values()])
        for _, _, factory in self.edges[1:]:
            drop_idle = getattr(factory, "drop_idle", None)
            if drop_idle is not None:
                drop_idle()  # plain HTTP connections: nothing in flight worth a goodbye
        live = list(self.factory.live)
        in_hand = defer.DeferredList([p.stop_reading() for p in live])
        yield self._bounded(in_hand)
        yield self._bounded(self.factory.dispatcher.messages.idle())
        closed = []
        for p in live:
            d: defer.Deferred[None] = defer.Deferred()
            p.notifyOnClose(d)
            closed.append(d)
            p.send_frame({"type": "server_shutdown"})
            p.close()  # cut after a grace period if the client does not read
        yield defer.DeferredList(closed)
        # logouts (presence to friends) and anything they queued reach the database
        yield self._bounded(self.factory.dispatcher.drain())

    def _bounded(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        d.addTimeout(self.grace, self.clock)
        d.addErrback(lambda f: self.log.warn("graceful stop step timed out: {f}",
                                             f=f.getErrorMessage()))
        return d
