"""The composition root: builds every layer once, in dependency order.

``build`` is what twistd's ``makeService`` calls, and what tests call to run a
real daemon in-process on a loopback port.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer, endpoints, threads
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from qqchat.dispatch import Dispatcher
from qqchat.errors import StartupError
from qqchat.metrics import Registry, watch_process
from qqchat.net.listener import ChatListenerService, Edge
from qqchat.net.metrics_http import MetricsService
from qqchat.net.protocol import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_PER_ADDRESS,
    DEFAULT_RATE_BURST,
    DEFAULT_RATE_LIMIT,
    DEFAULT_SEND_BUFFER,
    ChatFactory,
)
from qqchat.net.proxy import DEFAULT_TRUSTED, ProxyProtocolEndpoint, parse_networks
from qqchat.passwords import DEFAULT_COST, Hasher
from qqchat.relay.base import Relay
from qqchat.relay.hub import SessionHub
from qqchat.relay.local import LocalRelay
from qqchat.services.accounts import AccountService
from qqchat.services.conversations import ConversationService
from qqchat.services.friends import FriendService
from qqchat.services.groups import GroupService
from qqchat.services.hotpath import HotPath
from qqchat.services.limits import Limits
from qqchat.services.messages import MessageService
from qqchat.services.moderation import DisabledAccounts
from qqchat.services.presence import PresenceService
from qqchat.services.search import SearchService
from qqchat.services.throttle import Counters, LocalCounters, LoginThrottle
from qqchat.services.users import UserDirectory
from qqchat.session import Session
from qqchat.storage.derived import DerivedService
from qqchat.storage.engines import create_engine
from qqchat.storage.pool import DatabaseService, make_pool, parse_database_url
from qqchat.storage.positions import ClusterView, Fence, LogPositions, PositionsService
from qqchat.storage.stores import Stores
from qqchat.storage.writer import LogWriter

#: threads that hash passwords (scrypt at the default cost: 16 MiB and ~50 ms each)
HASH_THREADS = 2


class ThreadPoolService(Service):
    """A thread pool that lives as long as the daemon."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        if not self.pool.joined:  # the daemon may be stopped twice
            self.pool.stop()


class ClusterEvents:
    """The services' side of the cluster relay (``relay.base.RelayListener``)."""

    def __init__(self, messages: MessageService, presence: PresenceService) -> None:
        self._messages = messages
        self._presence = presence

    async def resync(self, session: Session) -> int:
        return await self._messages.resync(session)

    async def gone_offline(self, user_id: int, name: str) -> None:
        await self._presence.announce(user_id, name, False)


@dataclass(frozen=True)
class Settings:
    listen: str = "tcp:6000:interface=127.0.0.1"
    #: connections start with a PROXY protocol header naming the real client
    proxy_protocol: bool = False
    #: who may send that header (addresses, networks; comma-separated): others are refused
    proxy_from: str = DEFAULT_TRUSTED
    db: str = "sqlite:///qqchat.db"
    db_pool_min: int = 2
    db_pool_max: int = 10
    #: seconds to keep trying a MySQL server that is not reachable at start
    db_wait: float = 30.0
    #: milliseconds between the starts of two message-log transactions at the least
    commit_interval_ms: float = 0.0
    #: "lock" or "positions" (``Engine.log_order``; positions needs ``redis``)
    log_order: str = "lock"
    hash_cost: int = DEFAULT_COST
    #: seconds a session token stays valid after its last use
    token_ttl: float = 30 * 24 * 3600.0
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_line: int = DEFAULT_MAX_LINE
    max_send_buffer: int = DEFAULT_SEND_BUFFER
    #: bytes waiting for slow clients, all together, before the slowest is cut off
    max_pending_bytes: int = DEFAULT_MAX_PENDING
    rate_limit: float = DEFAULT_RATE_LIMIT
    rate_burst: int = DEFAULT_RATE_BURST
    max_per_address: int = DEFAULT_MAX_PER_ADDRESS
    kick_on_duplicate: bool = True
    #: R9: False (--broadcast admins) lets only admin accounts broadcast
    broadcast_anyone: bool = False
    #: redis://HOST:PORT/N turns on cluster mode; None is a single node
    redis: str | None = None
    node_id: str | None = None
    #: scopes Redis keys and channels, for several clusters on one Redis database
    cluster_name: str | None = None
    #: a Twisted endpoint serving GET /metrics (Prometheus text); None: off
    metrics_listen: str | None = None
    limits: Limits = field(default_factory=Limits)
    #: PEM paths: serve TLS on ``listen`` (the certificate file may carry its chain)
    tls_cert: str | None = None
    tls_key: str | None = None
    #: a Twisted endpoint serving the browser app and its WebSocket; None: off
    web_listen: str | None = None
    #: origins, besides the page's own, whose pages may open the WebSocket
    web_origins: tuple[str, ...] = ()


class ChatDaemon(MultiService):
    """The whole daemon. Children start in order ([metrics,] database, listener).

    ``stopService`` is the graceful stop, the whole of it: the clients first (see
    there), then the children in reverse, one after the other: MultiService would
    stop them all at once and close the pool under the goodbyes and presence
    updates."""

    log = Logger()

    def __init__(self, clock: IReactorTime, grace: float = 5.0) -> None:
        super().__init__()
        self.clock = clock
        #: seconds each step of a graceful stop may take before the next one starts
        self.grace = grace
        self.database: DatabaseService
        self.listener: ChatListenerService
        self.dispatcher: Dispatcher
        self.hub: SessionHub
        self.writer: LogWriter
        self.relay: Relay
        self.registry: Registry
        self.metrics: MetricsService | None = None

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """No new clients; the requests in hand answered and committed; every client
        told ``server_shutdown`` and closed; their logouts (presence to friends) and
        what those queued in storage; then the children, last started first (the
        relay after the listener, so logouts reach Redis; the database last)."""
        Service.stopService(self)
        listener = self.listener
        yield listener.stop_accepting()
        yield self._bounded(listener.finish_requests())
        yield self._bounded(self.writer.idle())
        yield listener.say_goodbye()
        yield self._bounded(self.dispatcher.drain())
        for child in reversed(list(self)):
            yield defer.maybeDeferred(child.stopService)

    def _bounded(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        d.addTimeout(self.grace, self.clock)
        d.addErrback(lambda f: self.log.warn("graceful stop step timed out: {f}",
                                             f=f.getErrorMessage()))
        return d


def build(settings: Settings, reactor: Any, on_fatal: Callable[[], Any] | None = None
          ) -> ChatDaemon:
    daemon = ChatDaemon(reactor)
    metrics = Registry()
    watch_process(metrics)
    if settings.metrics_listen is not None:
        daemon.metrics = MetricsService(
            endpoints.serverFromString(reactor, settings.metrics_listen), metrics, on_fatal)
        daemon.metrics.setServiceParent(daemon)  # first: serves through startup and stop
    db_config = parse_database_url(settings.db, settings.db_pool_min, settings.db_pool_max)
    pool = make_pool(db_config, reactor)
    engine = create_engine(db_config.dialect, pool.dbapi)
    positioned = settings.log_order == "positions"
    if positioned and not (settings.redis and engine.has_log_positions):
        raise StartupError("--log-order positions needs --redis and a MariaDB --db")
    engine.log_order = settings.log_order
    database = DatabaseService(db_config, pool, reactor, settings.db_wait,
                               log_order=settings.log_order)
    database.setServiceParent(daemon)

    stores = Stores.open(pool, engine)
    if engine.derives_later:
        # stopped before the database: a catch-up in hand finishes first
        DerivedService(stores.message_log.derive_conversations, reactor,
                       after=database.ready).setServiceParent(daemon)
    hub = SessionHub(metrics=metrics)
    relay: Relay
    positions: LogPositions | None = None
    view: ClusterView | None = None
    if settings.redis:
        from qqchat.relay.counters import RedisCounters
        from qqchat.relay.redis import RedisRelay, parse_redis_url

        cluster = RedisRelay(parse_redis_url(settings.redis), hub, reactor, settings.node_id,
                             metrics=metrics, cluster_name=settings.cluster_name)
        cluster.setServiceParent(daemon)  # stopped after the listener: logouts reach Redis
        relay = cluster
        if positioned:
            # the log's positions (storage/positions.py): published on Redis, the live
            # writers are the live nodes, and a batch commits only while this node's
            # key is surely alive
            positions = LogPositions(cluster.node, reactor)
            positions.fence = fence = Fence()
            cluster.on_refreshed = fence.refreshed
            view = ClusterView(positions, cluster.live_nodes, reactor)
            cluster.listen_positions(view.heard)
            PositionsService(view, stores.message_log.sequence_head, cluster.publish_position,
                             reactor, after=database.ready).setServiceParent(daemon)
    else:
        relay = LocalRelay(hub)
    writer = LogWriter(
        stores.message_log, reactor, metrics=metrics,
        min_interval=settings.commit_interval_ms / 1000, positions=positions,
        safe=(lambda upto: defer.Deferred.fromCoroutine(view.safe(upto)))
        if view is not None else None)
    limits = settings.limits
    users = UserDirectory(stores.accounts)
    presence = PresenceService(stores.social, relay)
    # password hashing on threads of its own: a login flood queues there, never in
    # front of the database's threads or the reactor's
    hash_threads = ThreadPoolService(ThreadPool(0, HASH_THREADS, "qqchat-hash"))
    hash_threads.setServiceParent(daemon)
    hasher = Hasher(lambda f, *a: threads.deferToThreadPool(reactor, hash_threads.pool, f, *a),
                    settings.hash_cost)
    counters: Counters = RedisCounters(cluster) if settings.redis else LocalCounters(reactor)
    throttle = LoginThrottle(counters, limits.login_failures_account,
                             limits.login_failures_address, limits.login_window)
    accounts = AccountService(stores.accounts, stores.social, hasher, relay, presence, users,
                              reactor, limits, stores.tokens, settings.token_ttl,
                              kick_on_duplicate=settings.kick_on_duplicate, throttle=throttle,
                              # two queued per thread: a thread never idles while
                              # the reactor hands it the next
                              hashes_at_once=2 * HASH_THREADS)
    messages = MessageService(stores.message_log, stores.groups, writer, relay, users, limits,
                              reactor)
    hot = HotPath(stores.message_log, stores.groups, writer, relay, users, limits, reactor,
                  metrics=metrics, broadcast_anyone=settings.broadcast_anyone)
    DisabledAccounts(stores.accounts, hub, presence, reactor).setServiceParent(daemon)
    friends = FriendService(stores.social, relay, users, reactor, limits)
    groups = GroupService(stores.groups, relay, reactor, limits)
    dispatcher = Dispatcher(accounts, presence, messages, hot, friends, groups,
                            SearchService(stores.directory, relay, reactor, limits),
                            ConversationService(stores.directory), limits, metrics=metrics)
    if settings.redis:
        cluster.listen(ClusterEvents(messages, presence))

    factory = ChatFactory(dispatcher, reactor, settings.idle_timeout, settings.max_line,
                          settings.max_send_buffer, settings.rate_limit,
                          settings.rate_burst, settings.max_per_address,
                          metrics=metrics, max_pending_bytes=settings.max_pending_bytes)
    endpoint = endpoints.serverFromString(reactor, settings.listen)
    if settings.proxy_protocol:
        # under TLS: the PROXY header comes first, in clear, then the handshake
        endpoint = ProxyProtocolEndpoint(endpoint, reactor, parse_networks(settings.proxy_from))
    edges: list[Edge] = []
    if settings.web_listen:
        from qqchat.net.web import WebSite  # wsproto only when the web edge is on

        web_endpoint = endpoints.serverFromString(reactor, settings.web_listen)
        if settings.tls_cert and settings.tls_key:
            from qqchat.net.tls import tls_endpoint

            web_endpoint = tls_endpoint(web_endpoint, settings.tls_cert, settings.tls_key)
        edges.append(("web", web_endpoint, WebSite(factory, settings.web_origins)))
    if settings.tls_cert and settings.tls_key:
        from qqchat.net.tls import tls_endpoint  # pyOpenSSL only when TLS is used

        endpoint = tls_endpoint(endpoint, settings.tls_cert, settings.tls_key)
    listener = ChatListenerService(endpoint, factory, database.ready, reactor, on_fatal,
                                   edges=edges)
    listener.setServiceParent(daemon)

    daemon.database, daemon.listener, daemon.dispatcher = database, listener, dispatcher
    daemon.hub, daemon.writer, daemon.relay = hub, writer, relay
    daemon.registry = metrics
    return daemon
