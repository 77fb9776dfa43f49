"""The listening service: waits for the database, then accepts; on stop, says goodbye."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger

from qqchat.errors import StartupError
from qqchat.net.protocol import ChatFactory


class ChatListenerService(Service):
    """Starts listening once ``ready`` fires, so no client meets a half-built server.

    If startup fails (say the database is unreachable), it logs why and calls
    ``on_fatal`` (the daemon stops the reactor) rather than running without storage.
    """

    log = Logger()

    def __init__(self, endpoint: IStreamServerEndpoint, factory: ChatFactory,
                 ready: defer.Deferred[Any], clock: IReactorTime,
                 on_fatal: Any = None, grace: float = 5.0) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.ready = ready
        self.clock = clock
        self.on_fatal = on_fatal
        self.grace = grace
        self.port: IListeningPort | None = None
        self.listening: defer.Deferred[IListeningPort] = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        d = self.ready
        d.addCallback(lambda _: self.endpoint.listen(self.factory))
        d.addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        addr = port.getHost()
        self.log.info("qqchat listening on {host}:{port}", host=getattr(addr, "host", "?"),
                      port=getattr(addr, "port", "?"))
        self.listening.callback(port)

    def _failed(self, failure: Any) -> None:
        if failure.check(StartupError):
            # an operator's problem with a clear message, not a bug: no traceback
            self.log.error("qqchat could not start: {why}", why=failure.getErrorMessage())
        else:
            self.log.failure("qqchat could not start", failure)
        self.listening.errback(failure)
        self.listening.addErrback(lambda _: None)
        if self.on_fatal is not None:
            self.on_fatal()

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Graceful stop: no new clients; finish the requests in hand and commit them;
        tell every client ``server_shutdown`` and close; let logouts reach storage."""
        super().stopService()
        if self.port is not None:
            yield self.port.stopListening()
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
