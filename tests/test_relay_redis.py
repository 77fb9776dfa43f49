"""The cluster relay against a real redis-server, with sessions on fake connections.

No database and no daemon: two or three ``RedisRelay`` objects in this process
are the nodes, and what reaches a user is what its ``FakeConnection`` was given.
Each test waits on a fence: a push sent after the traffic under test, through the
same Redis, so that when it has arrived everything published before it has too.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from redis_server import RedisServer
from twisted.internet import task
from unit_support import FakeConnection

from qqchat.relay.hub import SessionHub
from qqchat.relay.publisher import resp_command
from qqchat.relay.redis import RedisRelay, parse_redis_url
from qqchat.session import Session

WAIT = 10.0
_nodes = itertools.count(1)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


async def until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> None:
    """Wait for a condition the reactor makes true (polled, bounded)."""
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout
    while not check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.01, lambda: None)


class Node:
    """One relay with its hub, and what it asked its listener to do."""

    def __init__(self, url: str, **kw: Any) -> None:
        from twisted.internet import reactor

        self.hub = SessionHub()
        self.resynced: list[int] = []
        self.relay = RedisRelay(parse_redis_url(url), self.hub, reactor,
                                f"n{next(_nodes)}", listener=self, **kw)

    async def resync(self, session: Session) -> None:
        assert session.user_id is not None
        self.resynced.append(session.user_id)

    async def gone_offline(self, user_id: int, name: str) -> None:
        pass

    async def start(self) -> Node:
        self.relay.startService()
        await self.relay.connected
        await until(lambda: self.relay._sub is not None, "the subscription")
        await until(lambda: self.relay._publisher.connected, "the publisher")
        return self

    async def login(self, uid: int) -> FakeConnection:
        conn = FakeConnection()
        session = Session(conn)  # type: ignore[arg-type]
        session.user_id, session.name, session.seen = uid, f"user{uid}", set()
        assert await self.relay.claim(session, kick=True)
        return conn

    async def stop(self) -> None:
        if self.relay.running:
            await self.relay.stopService()


@pytest_twisted.async_yield_fixture
async def nodes(redis: RedisServer) -> AsyncIterator[Callable[..., Any]]:
    started: list[Node] = []

    async def make(url: str | None = None, **kw: Any) -> Node:
        node = await Node(url or redis.url, **kw).start()
        started.append(node)
        return node

    yield make
    for node in started:
        await node.stop()


def publish(port: int, channel: bytes, payload: bytes) -> int:
    """PUBLISH from outside the daemons, as anyone who can reach Redis can; waits for
    the reply, so Redis has handed the payload to its subscribers when this returns."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(resp_command(b"PUBLISH", channel, payload))
        reply = sock.makefile("rb").readline()
    assert reply.startswith(b":"), reply
    return int(reply[1:])


def fence_line(n: int) -> bytes:
    return b'{"type":"fence","n":%d}\n' % n


@pytest.mark.logged_errors_ok
@pytest_twisted.ensureDeferred
async def test_malformed_payloads_are_skipped_and_the_subscription_survives(
        redis: RedisServer, nodes: Callable[..., Any]) -> None:
    """Garbage on the relay's channels reaches no socket and drops no connection; the
    push sent after it arrives whole, on a line of its own."""
    a, b = await nodes(), await nodes()
    conn = await a.login(7)
    sub, resyncs = a.relay._sub, list(a.resynced)
    user, everyone = a.relay._user_channel(7), b"qq:all"
    msg = b'{"type":"message","id":5,"from":1,"name":"x","text":"hi","ts":1}\n'
    bad = [(user, b"M "), (user, b"M x y"), (user, b'E {"type":"presen'), (user, b"E"),
           (everyone, b"B"), (everyone, b"B ab12 1"),  # the old format, broken or not
           (user, b"M 5 " + msg), (user, b'E {"type":"presence"}\n'),
           (user, b"M1 "), (user, b"M1 x y"), (user, b"M1 5"), (user, b"M1 5 {}\n"),
           (user, b"M1 05 " + msg), (user, b"M1 6 " + msg), (user, b"M1 5 " + msg[:-1]),
           (user, b"M1 5 " + msg[:-2] + b"\n}\n"), (user, b"M1 5 " + msg + msg),
           (user, b'E1 {"type":"presen'), (user, b"E1"), (user, b"E1 x\ny"),
           (user, b'E1 {"type":"a"}\n{"type":"b"}\n'), (user, b'E1 {"type":1}\n'),
           (user, b'E1 {"type":"a",}\n'), (user, b"E1 " + msg), (user, b"\xff\xfe"),
           (user, b"K"), (user, b"K1"), (user, b"K1 \xff"), (user, b"M2 5 " + msg),
           (everyone, b"B1"), (everyone, b"B1 ab12 1"), (everyone, b"B1 ab12 x 1 {}\n"),
           (everyone, b"B1 ab12 5 1 " + msg[:30]), (everyone, b"B1 ab12 5 1 {}\n"),
           (everyone, b"B2 ab12 5 1 " + msg)]
    for channel, payload in bad:
        publish(redis.port, channel, payload)
    b.relay.deliver([7], 5, msg)
    b.relay.notify([7], fence_line(1))
    await until(lambda: conn.lines, "the fence")
    assert conn.lines == [msg, fence_line(1)]
    assert a.relay._sub is sub and a.resynced == resyncs  # no reconnect, no resync


def db_url(redis: RedisServer, db: int) -> str:
    return f"redis://127.0.0.1:{redis.port}/{db}"


async def published(node: Node, count: int) -> None:
    """Wait until Redis has answered ``count`` publishes of ``node``: it has then
    handed them to their subscribers, before anything published after."""
    await until(lambda: node.relay._publisher._proto is not None
                and node.relay._publisher._proto.replies >= count, "the publishes")


@pytest_twisted.ensureDeferred
async def test_clusters_on_two_databases_of_one_redis_do_not_hear_each_other(
        redis: RedisServer, nodes: Callable[..., Any]) -> None:
    """Keys are apart by database; channels are global in Redis, so they carry the
    database number: a chat or a broadcast in one cluster reaches none of the other."""
    a = await nodes(db_url(redis, 0))
    b, b2 = await nodes(db_url(redis, 1)), await nodes(db_url(redis, 1))
    other = await b.login(2)
    msg = b'{"type":"message","id":5,"from":1,"name":"x","text":"not yours","ts":1}\n'
    a.relay.deliver([2], 5, msg)
    a.relay.deliver_all(5, msg, 1)
    a.relay.notify([2], b'{"type":"presence","user":1,"name":"x","online":true}\n')
    await published(a, 3)
    b2.relay.notify([2], fence_line(1))
    await until(lambda: other.lines, "the fence")
    assert other.lines == [fence_line(1)]


@pytest_twisted.ensureDeferred
async def test_clusters_named_apart_share_one_database(
        redis: RedisServer, nodes: Callable[..., Any]) -> None:
    """--cluster-name scopes keys as well as channels: the same user logs in to two
    clusters on one database without a kick, and each hears only its own pushes; the
    login counters' keys (run_script) carry the name too."""
    red, blue = await nodes(cluster_name="red"), await nodes(cluster_name="blue")
    blue2 = await nodes(cluster_name="blue")
    on_red, on_blue = await red.login(2), await blue.login(2)
    msg = b'{"type":"message","id":5,"from":1,"name":"x","text":"red only","ts":1}\n'
    red2 = await nodes(cluster_name="red")
    red2.relay.deliver([2], 5, msg)
    await published(red2, 1)
    blue2.relay.notify([2], fence_line(1))
    await until(lambda: on_blue.lines and on_red.lines, "the pushes")
    assert on_blue.lines == [fence_line(1)] and on_red.lines == [msg]
    assert await red.relay.run_script("return redis.call('INCR', KEYS[1])", ["c:x"], []) == 1
    assert await blue.relay.run_script("return redis.call('INCR', KEYS[1])", ["c:x"], []) == 1
    keys = all_keys(redis)
    assert {"qq:red:sess:2", "qq:blue:sess:2", "qq:red:c:x", "qq:blue:c:x"} <= keys
    assert not {k for k in keys if not k.startswith(("qq:red:", "qq:blue:"))}


def all_keys(redis: RedisServer) -> set[str]:
    with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as sock:
        sock.sendall(resp_command(b"KEYS", b"*"))
        reader = sock.makefile("rb")
        count = int(reader.readline()[1:])
        keys = set()
        for _ in range(count):
            reader.readline()
            keys.add(reader.readline()[:-2].decode())
    return keys


def test_a_cluster_name_cannot_take_another_cluster_namespace() -> None:
    from twisted.internet import reactor

    config = parse_redis_url("redis://127.0.0.1:1/1")
    for bad in ("db1", "db0", "", "a b", "1x", "x" * 65, "a:b"):
        with pytest.raises(ValueError):
            RedisRelay(config, SessionHub(), reactor, cluster_name=bad)
    assert RedisRelay(config, SessionHub(), reactor).namespace == "db1"
    assert RedisRelay(config, SessionHub(), reactor, cluster_name="dbx").namespace == "dbx"
