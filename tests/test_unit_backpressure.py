"""Memory a connection can pin is bounded at every stage (R2, R8): pushes held during a
login backlog count against the send-buffer cap, nothing is queued during the close
grace, and a daemon-wide cap sheds the slowest reader first."""

from __future__ import annotations

from typing import Any

from test_unit_protocol import FakeDispatcher
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from qqchat.net.protocol import ChatFactory, ChatProtocol

PUSH = b'{"type":"message","id":%d,"from":2,"name":"bob","text":"' + b"x" * 1000 + b'"}\n'


def connect(factory: ChatFactory, port: int = 4321) -> tuple[ChatProtocol, StringTransport]:
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def logged_in(proto: ChatProtocol, uid: int = 1) -> None:
    proto.session.user_id, proto.session.name = uid, f"user{uid}"


def factory(**kw: Any) -> ChatFactory:
    return ChatFactory(FakeDispatcher(), task.Clock(), max_send_buffer=64 * 1024, **kw)


def test_pushes_held_during_the_backlog_count_against_the_cap() -> None:
    f = factory()
    proto, transport = connect(f)
    logged_in(proto)
    proto.session.begin_sync()  # the backlog is being sent; the client stopped reading
    for mid in range(1, 1000):
        proto.session.deliver(mid, PUSH % mid)
        if transport.disconnected:
            break
    assert transport.disconnected, "a reader that stalls in its backlog must be cut off"
    assert mid * len(PUSH % 1) <= 2 * 64 * 1024  # cut near the cap, not after 1 MB
    assert proto.session.closed


def test_held_pushes_within_the_cap_are_all_sent_after_the_backlog() -> None:
    f = factory()
    proto, transport = connect(f)
    logged_in(proto)
    proto.session.begin_sync()
    for mid in range(1, 21):
        proto.session.deliver(mid, PUSH % mid)
    assert transport.value() == b""
    proto.session.end_sync()
    assert transport.value().count(b'"type":"message"') == 20
    assert not transport.disconnected


def test_nothing_is_queued_for_a_connection_in_its_close_grace() -> None:
    f = factory()
    proto, transport = connect(f)
    logged_in(proto)
    proto.timeoutConnection()  # idle timeout: error, then a graceful close
    before = transport.value()
    for mid in range(1, 200):
        proto.session.deliver(mid, PUSH % mid)
    assert transport.value() == before


def test_the_daemon_wide_cap_sheds_the_slowest_reader_first() -> None:
    f = ChatFactory(FakeDispatcher(), task.Clock(), max_send_buffer=1024 * 1024,
                    max_pending_bytes=100 * 1024)
    slow, slow_t = connect(f, 1)
    slower, slower_t = connect(f, 2)
    fine, fine_t = connect(f, 3)
    for proto, uid in ((slow, 1), (slower, 2), (fine, 3)):
        logged_in(proto, uid)
    slow_t.producer.pauseProducing()  # their kernels' buffers are full
    slower_t.producer.pauseProducing()
    for mid in range(1, 41):
        slow.session.deliver(mid, PUSH % mid)
    for mid in range(1, 61):
        slower.session.deliver(mid, PUSH % mid)
        if slower_t.disconnected:
            break
    fine.session.deliver(1, PUSH % 1)
    assert slower_t.disconnected and not slow_t.disconnected and not fine_t.disconnected
    assert f.pending_bytes <= 100 * 1024


def test_pending_bytes_are_released_when_a_reader_catches_up_or_goes() -> None:
    f = ChatFactory(FakeDispatcher(), task.Clock(), max_pending_bytes=10 * 1024 * 1024)
    proto, transport = connect(f)
    logged_in(proto)
    transport.producer.pauseProducing()
    for mid in range(1, 11):
        proto.session.deliver(mid, PUSH % mid)
    assert f.pending_bytes >= 10 * 1000
    transport.producer.resumeProducing()
    assert f.pending_bytes == 0
    transport.producer.pauseProducing()
    proto.session.deliver(11, PUSH % 11)
    proto.connectionLost()
    assert f.pending_bytes == 0
