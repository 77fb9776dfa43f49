"""Cluster relay over Redis: presence, one session per user, and cross-node pushes.

The only module that imports txredisapi (pinned in pyproject: its connection API
changed between minor versions). Two connections, as Redis requires: one
subscribed, one for commands. Publish/subscribe delivers at most once, so it is
only the fast path: after every (re)subscribe the node re-asserts its users'
presence and resyncs each of its sessions from the message log.

The node key is refreshed on a timer of its own that waits for nothing, and dead
nodes are reaped by another, in the background, one pass at a time: telling a
dead node's users' friends can take longer than the key lives, and must never let
it expire. A node reaps others only once its own refreshes have succeeded for a
TTL: after Redis was away every key had expired, and the live peers need that
long to write theirs again. A node that finds its own key gone re-asserts its
users (its peers may have reaped them).

With ``--redis redis+sentinel://...`` every connection goes through
``sentinel.SentinelEndpoint``, which connects wherever the Sentinels say the master
is now: a failover is one more reconnect, with the same re-subscribe, re-assert
and resync. Connections left on a server that is no master any more (a ``-READONLY``
reply, or another connection that found a new master) are dropped so that they
follow.

Redis keys (prefix ``qq:``, or ``qq:<name>:`` with ``--cluster-name``; the
database number already keeps the keys of two clusters apart):

- ``node:<id>``: this node is alive (refreshed by a heartbeat, expires on its own);
  ``nodes``: every node that may own users; ``nodeusers:<id>``: whose sessions it holds.
- ``sess:<uid>``: ``<node>|<token>`` of the user's one session; ``online``: a sorted
  set of online user ids (the cluster-wide ``who``); ``names``: their names.

Channels: ``qq:<ns>:u:<uid>`` per online user, subscribed by the node that holds
the session; ``qq:<ns>:all`` for broadcasts; with ``--log-order positions``,
``qq:<ns>:pos``, where each node publishes its log position as ``P1 <node>
<position>`` (storage/positions.py). Channels, unlike keys, are global in
Redis, whatever the database: the namespace ``<ns>`` is ``db<N>`` for database N,
or the ``--cluster-name``, so that two clusters on one Redis never hear each other.

Payloads start with a head naming their kind and the relay's format version
(``FORMAT``), so that nodes of two releases can share a cluster during a rolling
upgrade: a node skips (and logs) a head it does not know, and an older node
ignores a newer head without a word. Format 1:

- ``M1 <id> <line>``: a stored message (``line`` is its ``message`` push);
- ``E1 <line>``: an event that is not stored (presence, friend request...);
- ``K1 <token>``: kick that session;
- ``B1 <node> <id> <sender> <line>``: a broadcast, for everyone but ``sender``.

Anyone who can reach Redis can publish, and a payload cut short or glued to
another would desynchronise a client's stream, so every payload is checked before
it reaches a socket (``_received``). The check is cheap on the per-message path:
a ``line`` must be one line, ``{`` to ``}\\n``, with no other line end; a message
must start with ``{"type":"message","id":<id>,`` (our encoder writes the keys in
that order), which also ties the body to the id in the head. Events are rarer and
come in many types, so they are parsed whole.
"""

from __future__ import annotations

import random
import re
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
import txredisapi
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer, endpoints, task
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger

from qqchat.errors import ChatError, UnavailableError
from qqchat.metrics import LATENCY_BUCKETS, Registry
from qqchat.relay.base import RelayListener
from qqchat.relay.hub import SessionHub
from qqchat.relay.local import LocalRelay
from qqchat.relay.publisher import Publisher
from qqchat.relay.sentinel import SentinelEndpoint
from qqchat.session import Session

PREFIX = "qq:"
#: what a --cluster-name may be (part of key and channel names); never ``db<N>``, the
#: namespace of a cluster without a name on database N
CLUSTER_NAME = re.compile(r"(?!db[0-9]+$)[A-Za-z][A-Za-z0-9_.-]{0,63}")
HEARTBEAT = 5.0  # seconds between node heartbeats and reaper passes
NODE_TTL_MS = 15_000  # a node silent this long is dead: its users go offline
#: a node reaps others only after refreshing its own key without a failure this long:
#: after Redis was away, every live peer has had a TTL to write its key again
REAP_AFTER = NODE_TTL_MS / 1000
COMMAND_TIMEOUT = 5.0
#: seconds before the first reconnect with Sentinel (then backing off to 2 s): each
#: attempt itself waits, asking the Sentinels, until a master answers
SENTINEL_RETRY = 0.1
MAX_UNSENT = 10_000
_TS = re.compile(rb'"ts":(\d+)')  # a key: inside a JSON string a quote is escaped

#: the relay's payload format; see the module docstring before changing it
FORMAT = 1
_MESSAGE, _EVENT, _KICK, _BROADCAST, _POSITION = (
    b"%s%d" % (k, FORMAT) for k in (b"M", b"E", b"K", b"B", b"P"))
_KINDS = frozenset(b"MEKB")
_MESSAGE_HEAD = b'{"type":"message","id":'
_MESSAGE_HEAD_LEN = len(_MESSAGE_HEAD)
_TOKEN = re.compile(rb"[0-9a-f]{1,64}")
#: how much of a rejected payload a log line shows
_SHOWN = 80


def one_line(line: bytes) -> bool:
    """One JSON-object-shaped line: ``{`` to ``}\\n`` and no other line end, so that it
    can neither end short nor carry a second line into the client's stream."""
    return (line.startswith(b"{") and line.endswith(b"}\n")
            and line.find(b"\n") == len(line) - 1)


def message_line(line: bytes, mid: bytes) -> bool:
    """``line`` is one line and the ``message`` push of message ``mid`` (digits)."""
    return (line.startswith(_MESSAGE_HEAD) and line.startswith(mid, _MESSAGE_HEAD_LEN)
            and line.startswith(b",", _MESSAGE_HEAD_LEN + len(mid)) and one_line(line))


def event_line(line: bytes) -> bool:
    """``line`` is one line holding one JSON object with a ``type`` that is not a
    stored message's (those come with their id, as ``M``)."""
    if not one_line(line):
        return False
    try:
        frame = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    kind = frame.get("type") if isinstance(frame, dict) else None
    return isinstance(kind, str) and kind != "message"

_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local curnode = string.match(cur, '^([^|]*)|')
  if ARGV[5] == '0' and redis.call('EXISTS', ARGV[6] .. 'node:' .. curnode) == 1 then
    return {0, cur}
  end
  if curnode ~= ARGV[2] then
    redis.call('SREM', ARGV[6] .. 'nodeusers:' .. curnode, ARGV[1])
  end
end
redis.call('SET', KEYS[1], ARGV[2] .. '|' .. ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
redis.call('SADD', KEYS[4], ARGV[1])
return {1, cur or ''}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('SREM', KEYS[4], ARGV[1])
  return 1
end
return 0
"""

# re-assert a session after Redis lost or forgot it; 0 if someone else holds the user
_REASSERT = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[1])
return 1
"""

# this node is alive; 1 if its key was still there (0: it expired, or Redis lost it, and
# the peers may have taken this node's users offline meanwhile)
_REFRESH = """
local had = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return had
"""

# the nodes whose key is alive: those whose log positions count
_LIVE = """
local live = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'node:' .. node) == 1 then
    table.insert(live, node)
  end
end
return live
"""

# take a dead node's users offline, once: returns uid, name pairs. ARGV[3] == '1' reaps
# even a live node: a node restarted under the same id clears what it held before
_REAP = """
if ARGV[3] ~= '1' and redis.call('EXISTS', ARGV[2] .. 'node:' .. ARGV[1]) == 1 then
  return {}
end
local gone = {}
local mark = ARGV[1] .. '|'
for _, uid in ipairs(redis.call('SMEMBERS', ARGV[2] .. 'nodeusers:' .. ARGV[1])) do
  local key = ARGV[2] .. 'sess:' .. uid
  local cur = redis.call('GET', key)
  if cur and string.sub(cur, 1, #mark) == mark then
    local name = redis.call('HGET', ARGV[2] .. 'names', uid)
    redis.call('DEL', key)
    redis.call('ZREM', ARGV[2] .. 'online', uid)
    redis.call('HDEL', ARGV[2] .. 'names', uid)
    table.insert(gone, uid)
    table.insert(gone, name or '')
  end
end
redis.call('DEL', ARGV[2] .. 'nodeusers:' .. ARGV[1])
redis.call('SREM', ARGV[2] .. 'nodes', ARGV[1])
return gone
"""


@dataclass(frozen=True)
class RedisConfig:
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    password: str | None = None
    #: with Sentinel: where to ask (host, port) and the master's name there; the
    #: master's address then comes from them, never from host and port
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    sentinel_password: str | None = None

    def describe(self) -> str:
        if self.sentinels:
            hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
                             for h, p in self.sentinels)
            return f"redis+sentinel://{hosts}/{self.master}/{self.db}"
        return f"redis://{self.host}:{self.port}/{self.db}"


SENTINEL_PORT = 26379
_MASTER_NAME = re.compile(r"[^\s/?#@,]{1,128}")


def parse_redis_url(url: str) -> RedisConfig:
    """``redis://[:PASSWORD@]HOST[:PORT][/DB]``, or with Sentinel
    ``redis+sentinel://[:PASSWORD@]HOST[:PORT],HOST[:PORT].../MASTER[/DB]`` (the
    password is the data nodes'; ``?sentinel_password=`` the Sentinels' own)."""
    parts = urlsplit(url)
    if parts.scheme == "redis+sentinel":
        return _parse_sentinel_url(url)
    if parts.scheme != "redis":
        raise ValueError(f"unknown Redis URL scheme {parts.scheme!r}: use redis://HOST:PORT/N "
                         "or redis+sentinel://HOST:PORT,HOST:PORT/MASTER/N")
    try:
        port = parts.port or 6379
        db = int(parts.path.lstrip("/") or 0)
    except ValueError as e:
        raise ValueError(f"bad Redis URL {url!r}: {e}") from None
    password = unquote(parts.password) if parts.password else None
    return RedisConfig(parts.hostname or "127.0.0.1", port, db, password)


def _parse_sentinel_url(url: str) -> RedisConfig:
    parts = urlsplit(url)
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    password = None
    if at:
        _, colon, secret = userinfo.partition(":")
        password = unquote(secret if colon else userinfo) or None
    sentinels = []
    for item in hostlist.split(","):
        host = urlsplit("//" + item.strip())
        try:
            port = host.port or SENTINEL_PORT
        except ValueError as e:
            raise ValueError(f"bad Sentinel address {item!r} in {url!r}: {e}") from None
        if not host.hostname:
            raise ValueError(f"bad Redis URL {url!r}: a Sentinel address is empty "
                             "(redis+sentinel://HOST:PORT,HOST:PORT/MASTER/N)")
        sentinels.append((host.hostname, port))
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if path and path[-1] == "":
        path.pop()
    if not path or len(path) > 2 or _MASTER_NAME.fullmatch(path[0]) is None:
        raise ValueError(f"bad Redis URL {url!r}: name the master after the Sentinels "
                         "(redis+sentinel://HOST:PORT,HOST:PORT/MASTER/N)")
    try:
        db = int(path[1]) if len(path) > 1 else 0
    except ValueError:
        raise ValueError(f"bad Redis URL {url!r}: the database is a number") from None
    if db < 0:
        raise ValueError(f"bad Redis URL {url!r}: the database is a number")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"sentinel_password"}
    if unknown:
        raise ValueError(f"bad Redis URL {url!r}: unknown parameter "
                         f"{', '.join(sorted(unknown))} (only sentinel_password)")
    sentinel_password = query.get("sentinel_password", [""])[-1] or None
    return RedisConfig(db=db, password=password, sentinels=tuple(sentinels),
                       master=path[0], sentinel_password=sentinel_password)


class _Subscriber(txredisapi.SubscriberProtocol):
    def connectionMade(self) -> Any:
        # registered before super(): fires after AUTH/SELECT, on every reconnect
        self.whenConnected().addCallback(self.factory.relay._subscriber_ready)
        return super().connectionMade()

    def connectionLost(self, why: Any) -> Any:
        self.factory.relay._subscriber_lost(self)
        return super().connectionLost(why)

    def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
        self.factory.relay._received(channel, message)


class _SubscriberFactory(txredisapi.RedisFactory):
    """Not txredisapi's SubscriberFactory: that one takes no password or db."""

    protocol = _Subscriber
    maxDelay = 2

    def __init__(self, relay: RedisRelay, config: RedisConfig) -> None:
        super().__init__(None, config.db, 1, isLazy=True, password=config.password,
                         charset=None, convertNumbers=False)
        self.relay = relay
        if config.sentinels:
            self.initialDelay = SENTINEL_RETRY

    def stopTrying(self) -> Any:
        # txredisapi gives up for good after one failed AUTH/SELECT (a timeout while
        # Redis restarts counts); a relay must keep trying until the node stops
        if self.relay.stopping:
            return super().stopTrying()
        return defer.succeed(None)


class _CommandFactory(txredisapi.RedisFactory):
    maxDelay = 2

    def __init__(self, relay: RedisRelay, config: RedisConfig) -> None:
        super().__init__(None, config.db, 1, isLazy=True, password=config.password,
                         replyTimeout=COMMAND_TIMEOUT, convertNumbers=False)
        self.relay = relay
        if config.sentinels:
            self.initialDelay = SENTINEL_RETRY

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        self.relay._command_ready()

    def stopTrying(self) -> Any:
        if self.relay.stopping:
            return super().stopTrying()
        return defer.succeed(None)


class RedisRelay(Service):
    """The cluster implementation of ``relay.base.Relay``."""

    ordered = False
    log = Logger()

    def __init__(self, config: RedisConfig, hub: SessionHub, reactor: Any,
                 node_id: str | None = None, metrics: Registry | None = None,
                 cluster_name: str | None = None, listener: RelayListener | None = None
                 ) -> None:
        if cluster_name is not None and CLUSTER_NAME.fullmatch(cluster_name) is None:
            raise ValueError(f"bad cluster name {cluster_name!r}: a letter, then letters, "
                             "digits, '_', '.' or '-', at most 64, and not db<N>")
        self.config = config
        #: what keeps this cluster's channels apart from another's on the same Redis
        self.namespace = cluster_name or f"db{config.db}"
        self._prefix = PREFIX + (f"{cluster_name}:" if cluster_name else "")
        self._user_channels = f"{PREFIX}{self.namespace}:u:%d".encode()
        self._all_channel = f"{PREFIX}{self.namespace}:all".encode()
        self._positions_channel = f"{PREFIX}{self.namespace}:pos".encode()
        #: with --log-order positions: told each position another node publishes
        self._positions_listener: Callable[[str, int], None] | None = None
        #: told of each refresh of the node key that succeeded: (sent at, the key was
        #: still there, its lifetime in s); with --log-order positions, the log's
        #: ``Fence`` (whether the peers surely count this node as live)
        self.on_refreshed: Callable[[float, bool, float], None] | None = None
        self.hub = hub
        self._local = LocalRelay(hub)  # for the sessions on this node
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.node = node_id or secrets.token_hex(6)
        self._node_bytes = self.node.encode()
        self.stopping = False
        #: resends from the log after a (re)subscribe; tells friends of a dead node's users
        self._listener = listener
        self._sub_factory = _SubscriberFactory(self, config)
        self._cmd_factory = _CommandFactory(self, config)
        #: where every connection goes: the one server, or the master Sentinel names
        self._redis_endpoint = self._endpoint()
        #: pushes go out on a third connection, as raw RESP (publisher.py says why)
        retry = (backoffPolicy(SENTINEL_RETRY, 2.0, jitter=lambda: random.uniform(0, 0.1))
                 if config.sentinels else None)
        self._publisher = Publisher(self._redis_endpoint, config.password,
                                    self._publisher_ready, reactor, retry)
        self._sub: _Subscriber | None = None
        #: channels Redis confirmed subscribed on ``_sub``, and those being subscribed
        self._subscribed: set[bytes] = set()
        self._subscribing: dict[bytes, list[defer.Deferred[None]]] = {}
        #: the node key, on a timer of its own that nothing waits on (module docstring)
        self._beat = task.LoopingCall(self._beat_once)
        self._beat.clock = reactor
        #: dead nodes' users taken offline, in the background, one pass at a time
        self._reaper = task.LoopingCall(self._reap_once)
        self._reaper.clock = reactor
        self._reaping: defer.Deferred[None] | None = None
        #: since when every refresh of the node key succeeded (None: the last failed)
        self._healthy_since: float | None = None
        self._reasserting: defer.Deferred[None] | None = None
        self.connected: defer.Deferred[None] = defer.Deferred()
        self._command_waiters: list[defer.Deferred[None]] = []
        #: publishes made while Redis was away, sent when it is back (bounded: the log
        #: is the record, this only saves recipients a wait until their next login)
        self._unsent: deque[tuple[bytes, bytes]] = deque(maxlen=MAX_UNSENT)
        m = metrics if metrics is not None else Registry()
        self._rejected = m.counter(
            "qqchat_relay_rejected_total", "Relay messages skipped: malformed, or of a "
            "format version this node does not know.")
        self._lag = m.histogram(
            "qqchat_relay_lag_seconds", "From a message's log timestamp to its arrival "
            "through Redis on the node of a recipient (wall clocks of both nodes).",
            LATENCY_BUCKETS)
        m.gauge("qqchat_relay_unsent", "Publishes queued while Redis is away or slow (at most "
                f"{MAX_UNSENT}; older ones are dropped).", lambda: len(self._unsent))

    # -- lifecycle ----------------------------------------------------------

    def _endpoint(self) -> IStreamClientEndpoint:
        config = self.config
        if config.sentinels:
            return SentinelEndpoint(self.reactor, config.sentinels, config.master,
                                    config.password, config.sentinel_password,
                                    on_master=self._master_moved)
        return endpoints.TCP4ClientEndpoint(self.reactor, config.host, config.port, timeout=5)

    def _transports(self) -> list[Any]:
        """The open connections to Redis: subscription, commands, publishes."""
        protos = [self._sub, *self._cmd_factory.pool, self._publisher.protocol]
        return [p.transport for p in protos if p is not None and p.transport is not None]

    def _master_moved(self, address: tuple[str, int]) -> None:
        """Sentinel names another master: a connection still open to the old one (a
        partition, a manual failover) would split this node across two servers."""
        for transport in self._transports():
            peer = transport.getPeer()
            if (getattr(peer, "host", None), getattr(peer, "port", None)) != address:
                transport.loseConnection()

    def _master_lost(self, why: str) -> None:
        """The server is no master any more (``-READONLY``): reconnect everything,
        through Sentinel, to the one that is."""
        if self.stopping or not self.config.sentinels:
            return  # one server named by --redis: reconnecting to it changes nothing
        self.log.warn("Redis {why}: reconnecting to the master", why=why)
        for transport in self._transports():
            transport.loseConnection()

    def listen(self, listener: RelayListener) -> None:
        """Hand over the services' side (built after the relay, which they need)."""
        if self.running:
            raise RuntimeError("the relay's listener is set before it starts")
        self._listener = listener

    def startService(self) -> None:
        if self._listener is None:
            raise RuntimeError("RedisRelay started without a listener (RedisRelay.listen)")
        super().startService()
        endpoint = self._redis_endpoint
        self._sub_factory.startConnecting(endpoint)
        self._cmd_factory.startConnecting(endpoint)
        self._publisher.start()
        self._run(self._beat, "heartbeat")
        self._run(self._reaper, "reaper")
        self.log.info("cluster node {node} using {redis}, namespace {ns}", node=self.node,
                      redis=self.config.describe(), ns=self.namespace)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        for loop in (self._beat, self._reaper):
            if loop.running:
                loop.stop()
        try:
            # the listener has logged our users out already; leave no trace
            yield self._cmd("DEL", self._k(f"node:{self.node}"))
            yield self._cmd("SREM", self._k("nodes"), self.node)
        except Exception as e:  # Redis may be down: the reaper will clean up
            self.log.warn("could not unregister node: {e}", e=e)
        self.stopping = True
        yield defer.gatherResults([self._sub_factory.disconnect(),
                                   self._cmd_factory.disconnect(),
                                   defer.maybeDeferred(self._publisher.stop)],
                                  consumeErrors=True)

    # -- plumbing -----------------------------------------------------------

    def _k(self, name: str) -> str:
        return self._prefix + name

    def _cmd(self, *args: Any) -> defer.Deferred[Any]:
        """Run one command; fail fast with ``unavailable`` when Redis is away."""
        if self._cmd_factory.size == 0:
            return defer.fail(UnavailableError("the cluster relay (Redis)"))
        d = self._cmd_factory.handler.execute_command(*args)
        d.addTimeout(COMMAND_TIMEOUT, self.clock)
        d.addErrback(self._unavailable)
        return d

    def _eval(self, script: str, keys: list[str], args: list[Any]) -> defer.Deferred[Any]:
        return self._cmd("EVAL", script, len(keys), *keys, *args)

    def run_script(self, script: str, names: Sequence[str], args: Sequence[Any]
                   ) -> defer.Deferred[Any]:
        """Run a Lua script on keys named as this relay names its own (with its prefix),
        failing fast with ``unavailable`` when Redis is away."""
        return self._eval(script, [self._k(n) for n in names], list(args))

    def _unavailable(self, failure: Any) -> Any:
        if failure.check(ChatError):
            return failure
        error = failure.getErrorMessage()
        self.log.warn("Redis command failed: {e}", e=error)
        if "READONLY" in error:
            self._master_lost("became a replica")
        raise UnavailableError("the cluster relay (Redis)")

    def _publish(self, channel: bytes, payload: bytes) -> None:
        """Fire and forget: a lost publish costs latency, never a message. Behind what
        is queued already, so pushes keep their order."""
        if self._unsent or not self._publisher.publish(channel, payload):
            self._unsent.append((channel, payload))

    def _publisher_ready(self) -> None:
        """The publisher is connected, or can take more again: send what waited."""
        unsent, publish = self._unsent, self._publisher.publish
        while unsent and publish(*unsent[0]):
            unsent.popleft()

    def _session_keys(self, uid: int, node: str | None = None) -> list[str]:
        return [self._k(f"sess:{uid}"), self._k("online"), self._k("names"),
                self._k(f"nodeusers:{node or self.node}")]

    def _user_channel(self, uid: int) -> bytes:
        return self._user_channels % uid

    # -- subscriptions --------------------------------------------------------

    def _subscriber_ready(self, proto: _Subscriber) -> None:
        self._sub = proto
        self._subscribed = set()
        channels = {self._all_channel} | {self._user_channel(s.user_id)
                                          for s in self.hub if s.user_id is not None}
        if self._positions_listener is not None:
            channels.add(self._positions_channel)
        d = proto.subscribe(sorted(channels))
        d.addTimeout(COMMAND_TIMEOUT, self.clock)

        def subscribed(_: Any) -> Any:
            if self._sub is not proto:
                return None
            self._subscribed |= channels
            return self._after_resubscribe()

        def failed(f: Any) -> None:
            # marked subscribed only once Redis said so; try again on a new connection
            self.log.warn("subscribe failed: {e}; reconnecting", e=f.getErrorMessage())
            if proto.transport is not None:
                proto.transport.loseConnection()

        d.addCallbacks(subscribed, failed)

    def _subscriber_lost(self, proto: _Subscriber) -> None:
        if self._sub is proto:
            self._sub = None
            self._subscribed = set()  # the next connection subscribes them again
            if not self.stopping:
                self.log.warn("lost the Redis subscription; reconnecting")

    def _command_ready(self) -> None:
        if not self.connected.called:
            # Before any claim (same connection, so Redis runs it first): users this
            # node id held in an earlier life, killed without a goodbye, are gone.
            d = self._reap(self.node, force=True)
            d.addErrback(lambda f: self.log.warn("startup cleanup failed: {e}",
                                                 e=f.getErrorMessage()))
            self.connected.callback(None)
        self._refresh().addErrback(lambda _: None)  # at once, not at the next beat
        waiting, self._command_waiters = self._command_waiters, []
        for d in waiting:
            d.callback(None)

    def _command_connection(self) -> defer.Deferred[None]:
        """Fires once the command connection is up (both reconnect on their own)."""
        if self._cmd_factory.size:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._command_waiters.append(d)
        return d

    @defer.inlineCallbacks
    def _after_resubscribe(self) -> Any:
        """Everything published while we were away was lost: re-assert presence (Redis
        may have restarted empty) and resend each local session's messages from the log."""
        yield self._command_connection()
        try:
            yield self._refresh()
        except ChatError:
            return
        yield self._reassert_all(resync=True)

    @defer.inlineCallbacks
    def _reassert_all(self, resync: bool) -> Any:
        """Claim again each local user whom Redis lost or another node reaped (kicking a
        session someone else holds now), and resend it the log if pushes were lost."""
        for session in list(self.hub):
            uid = session.user_id
            if uid is None or self.hub.get(uid) is not session:
                continue  # gone meanwhile (two passes can overlap)
            try:
                mine = yield self._eval(_REASSERT, self._session_keys(uid),
                                        [uid, f"{self.node}|{session.token}",
                                         session.name or ""])
            except ChatError:
                return
            if not mine:
                if self.hub.detach(session):
                    session.kick("logged in from another place")
            elif resync and self._listener is not None:
                try:
                    yield defer.ensureDeferred(self._listener.resync(session))
                except Exception:
                    self.log.failure("resync of {uid} failed", uid=uid)

    def _received(self, channel: bytes, message: bytes) -> None:
        """One payload from Redis: checked (module docstring) before any of it reaches a
        session; what fails is logged and skipped, never raised (an exception here would
        drop the subscription, and every reconnect resyncs every local session)."""
        if channel == self._positions_channel:
            self._position_received(message)
            return
        head, _, rest = message.partition(b" ")
        if head == _MESSAGE:
            mid, _, line = rest.partition(b" ")
            if not (mid.isdigit() and message_line(line, mid)):
                self._reject(channel, message, "malformed message")
                return
            self._observe_lag(line)
            session = self._session_for(channel)
            if session is not None:
                session.deliver(int(mid), line)
        elif head == _EVENT:
            if not event_line(rest):
                self._reject(channel, message, "malformed event")
                return
            session = self._session_for(channel)
            if session is not None:
                session.notify(rest)
        elif head == _KICK:
            if _TOKEN.fullmatch(rest) is None:
                self._reject(channel, message, "malformed kick")
                return
            session = self._session_for(channel)
            if session is not None and session.token.encode() == rest:
                self.hub.detach(session)
                session.kick("logged in from another place")
        elif head == _BROADCAST:
            parts = rest.split(b" ", 3)
            if not (len(parts) == 4 and parts[0] and parts[1].isdigit()
                    and parts[2].isdigit() and message_line(parts[3], parts[1])):
                self._reject(channel, message, "malformed broadcast")
                return
            node, mid, sender, line = parts
            if node != self._node_bytes:
                self._observe_lag(line)
                self._local.deliver_all(int(mid), line, int(sender))
        elif len(head) > 1 and head[0] in _KINDS and head[1:].isdigit():
            self._reject(channel, message, "an unknown format version (a node of another "
                         "release?)")
        else:
            self._reject(channel, message, "an unknown kind")

    # -- log positions (--log-order positions) ---------------------------------

    def listen_positions(self, listener: Callable[[str, int], None]) -> None:
        """Subscribe the positions channel (at the next subscription, before start)
        and hand every position another node publishes to ``listener``."""
        if self.running:
            raise RuntimeError("the positions listener is set before the relay starts")
        self._positions_listener = listener

    def publish_position(self, position: int) -> None:
        """This node's log position, to every node of the cluster (at most once, like
        any publish: the next one follows within a tick)."""
        self._publish(self._positions_channel, b"%s %s %d" % (_POSITION, self._node_bytes,
                                                              position))

    def live_nodes(self) -> defer.Deferred[list[str]]:
        """The nodes whose presence key is alive (``unavailable`` without Redis)."""
        d = self._eval(_LIVE, [self._k("nodes")], [self._prefix])
        d.addCallback(lambda nodes: [n.decode() if isinstance(n, bytes) else str(n)
                                     for n in nodes])
        return d

    def _position_received(self, message: bytes) -> None:
        parts = message.split(b" ")
        if (len(parts) != 3 or parts[0] != _POSITION or not parts[1]
                or not parts[2].isdigit() or len(parts[2]) > 19):
            self._reject(self._positions_channel, message, "a malformed position")
            return
        if self._positions_listener is not None and parts[1] != self._node_bytes:
            self._positions_listener(parts[1].decode(errors="replace"), int(parts[2]))

    def _reject(self, channel: bytes, message: bytes, why: str) -> None:
        self._rejected.inc()
        self.log.warn("skipped a relay message on {channel} with {why}: {payload}",
                      channel=channel.decode(errors="replace"), why=why,
                      payload=repr(message[:_SHOWN]))

    def _observe_lag(self, line: bytes) -> None:
        found = _TS.search(line)
        if found is not None:
            self._lag.observe(max(0.0, self.clock.seconds() - int(found[1]) / 1000))

    def _session_for(self, channel: bytes) -> Session | None:
        try:
            uid = int(channel.rsplit(b":", 1)[1])
        except (IndexError, ValueError):
            return None
        return self.hub.get(uid)

    def _subscribe_user(self, uid: int) -> defer.Deferred[None]:
        """Fires once Redis has confirmed the user's channel is subscribed; claims of
        one user meanwhile share the SUBSCRIBE. Fails with ``unavailable``."""
        channel = self._user_channel(uid)
        if channel in self._subscribed:
            return defer.succeed(None)
        waiters = self._subscribing.get(channel)
        if waiters is None:
            sub = self._sub
            if sub is None:
                return defer.fail(UnavailableError("the cluster relay (Redis)"))
            waiters = self._subscribing[channel] = []
            d = sub.subscribe([channel])
            d.addTimeout(COMMAND_TIMEOUT, self.clock)
            d.addCallbacks(lambda _: self._subscribe_done(channel, sub, None),
                           lambda f: self._subscribe_done(channel, sub, f))
        waiter: defer.Deferred[None] = defer.Deferred()
        waiters.append(waiter)
        return waiter

    def _subscribe_done(self, channel: bytes, sub: _Subscriber, failure: Any) -> None:
        waiters = self._subscribing.pop(channel, [])
        if failure is None and sub is self._sub:
            self._subscribed.add(channel)
            for w in waiters:
                w.callback(None)
            return
        why = failure.getErrorMessage() if failure is not None else "connection replaced"
        self.log.warn("subscribing {channel} failed: {why}", channel=channel.decode(),
                      why=why)
        for w in waiters:
            w.errback(UnavailableError("the cluster relay (Redis)"))

    def _unsubscribe_user(self, uid: int) -> None:
        channel = self._user_channel(uid)
        if channel in self._subscribed and self.hub.get(uid) is None:
            self._subscribed.discard(channel)
            if self._sub is not None:
                self._sub.unsubscribe([channel]).addErrback(lambda _: None)

    # -- heartbeat and the reaper ---------------------------------------------

    def _run(self, loop: task.LoopingCall, what: str) -> None:
        """Start a timer, and start it again should it ever stop on an error."""
        def failed(failure: Any) -> None:
            self.log.failure("the cluster {what} stopped; restarting it", failure, what=what)
            if self.running and not self.stopping:
                self._run(loop, what)

        loop.start(HEARTBEAT, now=False).addErrback(failed)

    def _beat_once(self) -> None:
        """One refresh, not waited for: a slow or failed one never delays the next."""
        self._refresh().addErrback(lambda _: None)

    def _refresh(self) -> defer.Deferred[Any]:
        sent = self.clock.seconds()
        d = self._eval(_REFRESH, [self._k(f"node:{self.node}"), self._k("nodes")],
                       [NODE_TTL_MS, self.node])
        d.addCallbacks(self._refreshed, self._refresh_failed, callbackArgs=(sent,))
        return d

    def _refreshed(self, had: Any, sent: float) -> None:
        if self.on_refreshed is not None:
            self.on_refreshed(sent, bool(int(had)), NODE_TTL_MS / 1000)
        if self._healthy_since is None:
            self._healthy_since = self.clock.seconds()
        if not int(had) and self._reasserting is None and len(self.hub):
            self.log.warn("this node's key had expired in Redis: re-asserting its users")
            d = self._reasserting = self._reassert_all(resync=False)
            d.addErrback(lambda f: self.log.failure("re-asserting users failed", f))
            d.addBoth(lambda _: setattr(self, "_reasserting", None))

    def _refresh_failed(self, failure: Any) -> Any:
        self._healthy_since = None
        return failure

    def _may_reap(self) -> bool:
        since = self._healthy_since
        return since is not None and self.clock.seconds() - since >= REAP_AFTER

    def _reap_once(self) -> None:
        """Start a pass over the other nodes unless one is still running."""
        if self._reaping is not None or not self._may_reap():
            return
        d = self._reaping = defer.ensureDeferred(self._reap_dead())
        d.addErrback(self._reap_failed)
        d.addBoth(lambda _: setattr(self, "_reaping", None))

    def _reap_failed(self, failure: Any) -> None:
        if not failure.check(ChatError):  # Redis away: reconnecting, nothing to do
            self.log.failure("reaping dead cluster nodes failed", failure)

    async def _reap_dead(self) -> None:
        for raw in await self._cmd("SMEMBERS", self._k("nodes")):
            node = raw.decode() if isinstance(raw, bytes) else str(raw)
            if node != self.node and self._may_reap():
                await self._reap(node, force=False)

    @defer.inlineCallbacks
    def _reap(self, node: str, force: bool) -> Any:
        gone = yield self._eval(_REAP, [], [node, self._prefix, "1" if force else "0"])
        pairs = list(zip(gone[::2], gone[1::2], strict=True))
        if pairs:
            self.log.info("node {node} is gone: {n} users offline", node=node, n=len(pairs))
        for uid, name in pairs:
            if self._listener is not None:
                n = name.decode() if isinstance(name, bytes) else str(name)
                try:
                    yield defer.ensureDeferred(self._listener.gone_offline(int(uid), n))
                except Exception:  # one user's friends miss an event; the others do not
                    self.log.failure("telling friends that {uid} is offline failed",
                                     uid=int(uid))

    # -- the Relay interface ----------------------------------------------------

    async def claim(self, session: Session, kick: bool) -> bool:
        uid = session.user_id
        assert uid is not None
        session.token = secrets.token_hex(8)
        await self._subscribe_user(uid)  # first, so no push published after the claim is missed
        try:
            ok, previous = await self._eval(
                _CLAIM, self._session_keys(uid),
                [uid, self.node, session.token, session.name or "", 1 if kick else 0, self._prefix])
        except ChatError:
            self._unsubscribe_user(uid)
            raise
        if not ok:
            session.token = ""
            if self.hub.get(uid) is None:
                self._unsubscribe_user(uid)
            return False
        old_local = self.hub.get(uid)
        if old_local is not None and old_local is not session:
            self.hub.detach(old_local)
            old_local.kick("logged in from another place")
        self.hub.attach(session)
        if previous:
            prev = previous.decode() if isinstance(previous, bytes) else str(previous)
            prev_node, _, prev_token = prev.partition("|")
            if prev_node != self.node:
                self._publish(self._user_channel(uid), _KICK + b" " + prev_token.encode())
        return True

    async def release(self, session: Session) -> bool:
        uid = session.user_id
        if uid is None or not self.hub.detach(session):
            return False
        self._unsubscribe_user(uid)
        try:
            return bool(await self._eval(_RELEASE, self._session_keys(uid),
                                         [uid, f"{self.node}|{session.token}"]))
        except ChatError:
            # Redis is away; the entry is re-checked when it is back, or reaped
            return True

    def deliver(self, user_ids: Iterable[int], msg_id: int, line: bytes) -> None:
        away = self._local.deliver_here(user_ids, msg_id, line)
        if away:
            payload = b"%s %d " % (_MESSAGE, msg_id) + line
            channels = self._user_channels
            for uid in away:
                self._publish(channels % uid, payload)

    def deliver_all(self, msg_id: int, line: bytes, exclude: int) -> None:
        self._local.deliver_all(msg_id, line, exclude)
        self._publish(self._all_channel,
                      b"%s %s %d %d " % (_BROADCAST, self._node_bytes, msg_id, exclude) + line)

    def notify(self, user_ids: Iterable[int], line: bytes) -> None:
        for uid in self._local.notify_here(user_ids, line):
            self._publish(self._user_channels % uid, _EVENT + b" " + line)

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        ids = sorted(set(user_ids))
        if not ids:
            return set()
        scores = await self._cmd("ZMSCORE", self._k("online"), *ids)
        return {uid for uid, score in zip(ids, scores, strict=True) if score is not None}

    async def who(self, offset: int, limit: int) -> tuple[int, list[tuple[int, str]]]:
        total = await self._cmd("ZCARD", self._k("online"))
        raw = await self._cmd("ZRANGE", self._k("online"), offset, offset + limit - 1)
        ids = [int(r) for r in raw]
        if not ids:
            return int(total), []
        names = await self._cmd("HMGET", self._k("names"), *ids)
        page = [(uid, n.decode() if isinstance(n, bytes) else str(n))
                for uid, n in zip(ids, names, strict=True) if n is not None]
        return int(total), page
