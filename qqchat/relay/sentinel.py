"""Finding the Redis master through Sentinel, before every connection.

With ``--redis redis+sentinel://...`` the relay's three connections (commands,
subscription, publishes) all connect through one ``SentinelEndpoint``: each
attempt asks the Sentinels in turn (``SENTINEL get-master-addr-by-name``), checks
with ``ROLE`` on a short connection of its own that the address is a master now
(a Sentinel can lag a failover, and a restarted old master calls itself master
until it is reconfigured), and only then connects there. So a connection lost
with the master comes back on whichever server Sentinel promoted, and the relay's
usual reconnect path (re-subscribe, re-assert presence, resync from the log) does
the rest.

While a failover is under way the Sentinels still name the dead master; one
``connect`` keeps asking every ``POLL`` seconds for ``RESOLVE_FOR`` seconds rather
than failing at once, so that the connection is back as soon as the new master
is, not at the next reconnect of a back-off.

txredisapi has a ``Sentinel`` of its own, but it drives only its command
connections (not a subscriber with our factory, nor the raw publisher), uses the
global reactor, and picks any Sentinel's ``SENTINEL MASTERS`` answer without
asking the master itself: this module is the small part of it we need.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer, endpoints, protocol, task
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

#: seconds one Sentinel or one ROLE probe may take (connect included)
QUERY_TIMEOUT = 1.0
#: seconds between two rounds of asking while no master answers as one
POLL = 0.2
#: seconds one ``connect`` keeps asking before it fails (the caller backs off and
#: calls again): longer than a failover takes
RESOLVE_FOR = 15.0

Address = tuple[str, int]


class MasterNotFoundError(ConnectError):
    """No Sentinel named a reachable server that says it is the master."""


class RedisReplyError(Exception):
    """An error reply (``-ERR ...``) to a query."""


def resp(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)


class _IncompleteError(Exception):
    pass


def parse_reply(data: bytes, at: int = 0) -> tuple[Any, int]:
    """One RESP2 reply from ``data[at:]``, and where the next starts. Errors come
    back as ``RedisReplyError`` values, not raised: a query reads every reply."""
    end = data.find(b"\r\n", at)
    if end < 0:
        raise _IncompleteError
    kind, rest, after = data[at:at + 1], data[at + 1:end], end + 2
    if kind == b"+":
        return rest, after
    if kind == b"-":
        return RedisReplyError(rest.decode(errors="replace")), after
    if kind == b":":
        return int(rest), after
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None, after
        if len(data) < after + n + 2:
            raise _IncompleteError
        return data[after:after + n], after + n + 2
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None, after
        items = []
        for _ in range(n):
            item, after = parse_reply(data, after)
            items.append(item)
        return items, after
    raise ValueError(f"not a Redis reply: {data[at:at + 40]!r}")


class _Query(protocol.Protocol):
    """Send some commands at once, read as many replies, hang up."""

    def __init__(self, commands: Sequence[bytes]) -> None:
        self.commands = commands
        self.buffer = b""
        self.done: defer.Deferred[list[Any]] = defer.Deferred(self._cancel)

    def _cancel(self, _: Any) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionMade(self) -> None:
        self.transport.write(b"".join(self.commands))

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        replies, at = [], 0
        try:
            while len(replies) < len(self.commands):
                reply, at = parse_reply(self.buffer, at)
                replies.append(reply)
        except _IncompleteError:
            return
        except ValueError as e:
            self._finish(e)
            return
        self._finish(replies)

    def _finish(self, result: Any) -> None:
        if self.done.called:
            return
        self.transport.loseConnection()
        if isinstance(result, Exception):
            self.done.errback(result)
        else:
            self.done.callback(result)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        if not self.done.called:
            self.done.errback(ConnectError(string="closed before every reply came"))


def _tcp(reactor: Any, address: Address, timeout: float) -> IStreamClientEndpoint:
    return endpoints.HostnameEndpoint(reactor, address[0], address[1], timeout=timeout)


async def query(reactor: Any, address: Address, commands: Sequence[bytes],
                timeout: float = QUERY_TIMEOUT) -> list[Any]:
    """The replies to ``commands`` (RESP) from the server at ``address``."""
    proto = _Query(commands)
    d = endpoints.connectProtocol(_tcp(reactor, address, timeout), proto)
    d.addCallback(lambda _: proto.done)
    d.addTimeout(timeout, reactor)
    return await d


def _auth(password: str | None) -> list[bytes]:
    return [resp(b"AUTH", password.encode())] if password else []


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    """Connects to whatever server the Sentinels name as master of ``master``.

    ``on_master`` is told the address each time it differs from the last one
    connected to: a failover happened, and connections still open to the old
    master (a partition, a manual failover) should be dropped."""

    log = Logger()

    def __init__(self, reactor: Any, sentinels: Sequence[Address], master: str,
                 password: str | None, sentinel_password: str | None = None,
                 connect_timeout: float = 5.0,
                 on_master: Callable[[Address], None] = lambda _: None) -> None:
        if not sentinels:
            raise ValueError("no Sentinel addresses")
        self.reactor = reactor
        self.sentinels = list(sentinels)
        self.master = master
        self.password = password
        self.sentinel_password = sentinel_password
        self.connect_timeout = connect_timeout
        self.on_master = on_master
        #: the master the last connection went to
        self.current: Address | None = None

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory: IProtocolFactory) -> Any:
        deadline = self.reactor.seconds() + RESOLVE_FOR
        while True:
            try:
                address = await self.resolve()
                proto = await _tcp(self.reactor, address, self.connect_timeout).connect(
                    factory)
            except ConnectError as e:
                if self.reactor.seconds() >= deadline:
                    self.log.warn("no Redis master for {master} yet: {why}",
                                  master=self.master, why=e)
                    raise
            else:
                self._connected(address)
                return proto
            await task.deferLater(self.reactor, POLL, lambda: None)

    def _connected(self, address: Address) -> None:
        if address == self.current:
            return
        if self.current is not None:
            self.log.warn("Sentinel moved the Redis master {master} from {old} to {new}",
                          master=self.master, old=_show(self.current), new=_show(address))
        else:
            self.log.info("Sentinel names {addr} as the Redis master {master}",
                          addr=_show(address), master=self.master)
        self.current = address
        self.on_master(address)

    async def resolve(self) -> Address:
        """The master's address: asks each Sentinel in turn (the last that answered
        first), and keeps the first answer whose server says ``ROLE`` master."""
        why: list[str] = []
        for sentinel in list(self.sentinels):
            try:
                address = await self._ask(sentinel)
                if address is None:
                    why.append(f"{_show(sentinel)} knows no master {self.master}")
                    continue
                role = await self._role(address)
            except (ConnectError, RedisReplyError, ValueError, defer.TimeoutError,
                    OSError) as e:
                why.append(f"{_show(sentinel)}: {e}")
                continue
            if role != "master":
                why.append(f"{_show(sentinel)} names {_show(address)}, which is a {role}")
                continue
            if self.sentinels[0] != sentinel:  # ask the one that knew first next time
                self.sentinels.remove(sentinel)
                self.sentinels.insert(0, sentinel)
            return address
        raise MasterNotFoundError(string="; ".join(why))

    async def _ask(self, sentinel: Address) -> Address | None:
        commands = [*_auth(self.sentinel_password),
                    resp(b"SENTINEL", b"get-master-addr-by-name", self.master.encode())]
        replies = await query(self.reactor, sentinel, commands)
        for r in replies:
            if isinstance(r, RedisReplyError):
                raise r
        found = replies[-1]
        if found is None:
            return None
        if not (isinstance(found, list) and len(found) == 2):
            raise ValueError(f"unexpected answer {found!r}")
        return _text(found[0]), int(found[1])

    async def _role(self, address: Address) -> str:
        replies = await query(self.reactor, address, [*_auth(self.password), resp(b"ROLE")])
        for r in replies:
            if isinstance(r, RedisReplyError):
                raise r
        role = replies[-1]
        if not (isinstance(role, list) and role):
            raise ValueError(f"unexpected ROLE answer {role!r}")
        return _text(role[0])


def _show(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
