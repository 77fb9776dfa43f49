"""The raw-RESP publisher: what it writes is what Redis parses, and it reads the replies."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from qqchat.relay.publisher import Publisher, PublishProtocol, resp_command


def connected(password: str | None = None) -> tuple[PublishProtocol, StringTransport,
                                                    list[str]]:
    events: list[str] = []
    proto = PublishProtocol(password, lambda p: events.append("ready"),
                            lambda p: events.append("lost"), Clock())
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, events


def test_publish_writes_one_resp_command_with_binary_safe_lengths() -> None:
    proto, transport, events = connected()
    assert events == ["ready"] and transport.value() == b""
    payload = b'M 7 {"text":"\xe4\xbd\xa0\xe5\xa5\xbd\\r\\n"}\n'
    proto.publish(b"qq:u:42", payload)
    assert transport.value() == resp_command(b"PUBLISH", b"qq:u:42", payload)
    assert transport.value() == (b"*3\r\n$7\r\nPUBLISH\r\n$7\r\nqq:u:42\r\n$%d\r\n%b\r\n"
                                 % (len(payload), payload))


def test_a_password_is_sent_first() -> None:
    proto, transport, events = connected("s3cret")
    assert transport.value() == resp_command(b"AUTH", b"s3cret") and events == []
    proto.dataReceived(b"+OK\r\n")
    assert events == ["ready"]


def test_replies_are_counted_across_reads() -> None:
    proto, transport, _ = connected()
    proto.dataReceived(b":1\r\n:0")
    proto.dataReceived(b"\r\n:3\r\n")
    assert proto.replies == 3 and transport.connected


@pytest.mark.logged_errors_ok
def test_an_auth_failure_drops_the_connection_for_a_retry() -> None:
    proto, transport, events = connected("wrong")
    proto.dataReceived(b"-WRONGPASS invalid username-password pair\r\n")
    assert transport.disconnecting and events == []


def test_losing_the_connection_is_reported() -> None:
    proto, _, events = connected()
    proto.connectionLost()
    assert events == ["ready", "lost"]


# -- the Publisher over a fake reactor: what the relay sees -------------------------


class Redis:
    """The publisher's connections, made by a MemoryReactorClock as Redis would accept
    them: each one a StringTransport to read what was written and feed replies."""

    def __init__(self, password: str | None = None) -> None:
        self.clock = MemoryReactorClock()
        self.writable: list[int] = []
        self.publisher = Publisher(TCP4ClientEndpoint(self.clock, "127.0.0.1", 6379),
                                   password, lambda: self.writable.append(1), self.clock)
        self.publisher.start()
        self.conns: list[tuple[Any, StringTransport]] = []

    def accept(self) -> StringTransport:
        factory = self.clock.tcpClients[len(self.conns)][2]
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.conns.append((proto, transport))
        return transport

    def drop(self) -> None:
        self.conns[-1][0].connectionLost(Failure(ConnectionDone()))


def test_nothing_is_published_before_redis_accepts_the_password() -> None:
    """The AUTH went out with publishes pipelined behind it: with a wrong password,
    the relay's queue was flushed into a connection that refused every one."""
    redis = Redis("s3cret")
    conn = redis.accept()
    assert not redis.publisher.publish(b"qq:db0:all", b"x") and redis.writable == []
    assert conn.value() == resp_command(b"AUTH", b"s3cret")
    conn.clear()
    redis.conns[-1][0].dataReceived(b"+OK\r\n")
    assert redis.writable == [1] and redis.publisher.publish(b"qq:db0:all", b"x")
    assert conn.value() == resp_command(b"PUBLISH", b"qq:db0:all", b"x")


@pytest.mark.logged_errors_ok
def test_a_refused_password_never_takes_publishes() -> None:
    redis = Redis("wrong")
    conn = redis.accept()
    redis.conns[-1][0].dataReceived(b"-WRONGPASS invalid username-password pair\r\n")
    assert conn.disconnecting and redis.writable == []
    assert not redis.publisher.publish(b"qq:db0:all", b"x")


def test_an_unanswered_ping_drops_the_connection() -> None:
    """A Redis gone without a FIN (host down, cable cut) would swallow publishes for
    good: a PING left unanswered for PING_TIMEOUT drops the connection."""
    redis = Redis()
    conn = redis.accept()
    redis.clock.advance(5.0)
    assert conn.value() == resp_command(b"PING")
    redis.conns[-1][0].dataReceived(b"+PONG\r\n")
    redis.clock.advance(5.0)
    redis.clock.advance(5.0)
    assert not conn.disconnecting and not conn.disconnected  # answered: alive
    redis.clock.advance(5.0)
    redis.clock.advance(5.0)
    assert conn.disconnected or conn.disconnecting


def test_a_full_socket_buffer_holds_publishes_back() -> None:
    """Past the transport's buffer the publisher refuses, so the relay queues (bounded)
    instead of growing the socket's buffer without end; it is told when to resume."""
    redis = Redis()
    conn = redis.accept()
    assert redis.writable == [1]
    assert conn.producer is not None and conn.streaming
    conn.producer.pauseProducing()
    assert not redis.publisher.publish(b"qq:db0:u:1", b"x")
    conn.producer.resumeProducing()
    assert redis.writable == [1, 1] and redis.publisher.publish(b"qq:db0:u:1", b"x")


def test_publishes_unanswered_when_the_connection_is_lost_go_again_on_the_next() -> None:
    """A publish written to a connection that then died may never have reached Redis;
    nothing else would resend it (only a resubscribe resyncs)."""
    redis = Redis()
    first = redis.accept()
    for n in range(3):
        assert redis.publisher.publish(b"qq:db0:u:%d" % n, b"p%d" % n)
    first.clear()
    redis.conns[-1][0].dataReceived(b":1\r\n")  # the first reached Redis
    redis.drop()
    assert not redis.publisher.publish(b"qq:db0:u:9", b"later")
    redis.clock.advance(3)
    second = redis.accept()
    assert second.value() == (resp_command(b"PUBLISH", b"qq:db0:u:1", b"p1")
                              + resp_command(b"PUBLISH", b"qq:db0:u:2", b"p2"))
    assert redis.writable == [1, 1]
