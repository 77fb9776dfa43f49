"""``GET /metrics`` over HTTP: the daemon's registry, for Prometheus to scrape."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.web import pages
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from qqchat.metrics import CONTENT_TYPE, Registry

#: seconds an idle keep-alive scrape connection may stay open
IDLE_TIMEOUT = 60


class _Only(Resource):
    """Any path not declared with ``putChild`` is a plain 404."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return pages.notFound("Not Found", "Metrics are at /metrics.")


class MetricsResource(_Only):
    """Renders the whole registry on every GET (and HEAD); a scrape is a few kB."""

    def __init__(self, registry: Registry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode())
        request.setHeader(b"Cache-Control", b"no-store")
        return self.registry.render()


class _QuietSite(Site):
    """No access log: a scrape every few seconds would drown the daemon's own lines."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class MetricsService(Service):
    """Serves ``/metrics`` on its own endpoint, from daemon start to daemon stop.

    It listens at once, before the database is ready, so a daemon that hangs
    in startup can still be watched. Failing to listen is fatal (``on_fatal``),
    like the chat port: a daemon silently missing from dashboards helps no one.
    """

    log = Logger()

    def __init__(self, endpoint: IStreamServerEndpoint, registry: Registry,
                 on_fatal: Any = None) -> None:
        self.endpoint = endpoint
        self.on_fatal = on_fatal
        root = _Only()
        root.putChild(b"metrics", MetricsResource(registry))
        site = _QuietSite(root, timeout=IDLE_TIMEOUT)
        site.displayTracebacks = False
        #: tracks open scrape connections, to close them on stop
        self._factory = WrappingFactory(site)
        self._factory.noisy = False
        self.port: IListeningPort | None = None
        self.listening: defer.Deferred[IListeningPort] = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        d = self.endpoint.listen(self._factory)
        d.addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        addr = port.getHost()
        self.log.info("metrics on http://{host}:{port}/metrics",
                      host=getattr(addr, "host", "?"), port=getattr(addr, "port", "?"))
        self.listening.callback(port)

    def _failed(self, failure: Failure) -> None:
        self.log.failure("metrics endpoint could not listen", failure)
        self.listening.errback(failure)
        self.listening.addErrback(lambda _: None)
        if self.on_fatal is not None:
            self.on_fatal()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        stopped = defer.maybeDeferred(port.stopListening) if port else defer.succeed(None)
        for proto in list(self._factory.protocols):
            proto.transport.loseConnection()
        return stopped
