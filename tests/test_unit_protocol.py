"""ChatProtocol framing, limits, idle timeout and request ordering, on StringTransport.

The protocol is built through the real ChatFactory so its wiring (max line,
clock, live set) is what the daemon uses; the dispatcher is a recording fake
except where the real one is needed to show ordering with real storage.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import unit_support
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from unit_support import frames

from qqchat.net.protocol import DEFAULT_MAX_LINE, ChatFactory, ChatProtocol
from qqchat.net.proxy import HEADER_TIMEOUT, HeaderFirstFactory, parse_networks
from qqchat.session import Session


class FakeDispatcher:
    """Echoes each request's ``req`` back, at once or when the test says so."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.requests: list[Any] = []
        self.pending: list[defer.Deferred[dict[str, Any] | None]] = []
        self.lost: list[Session] = []

    def dispatch(self, session: Session, msg: Any) -> defer.Deferred[dict[str, Any] | None]:
        self.requests.append(msg)
        if self.hold:
            d: defer.Deferred[dict[str, Any] | None] = defer.Deferred()
            self.pending.append(d)
            return d
        return defer.succeed({"type": "echo", "req": msg.get("req")})

    def release(self, index: int = 0) -> None:
        """Fire the ``index``-th held request with its echo reply."""
        d = self.pending[index]
        d.callback({"type": "echo", "req": self.requests[index].get("req")})

    def connection_lost(self, session: Session) -> defer.Deferred[None]:
        self.lost.append(session)
        return defer.succeed(None)


def connect(dispatcher: Any, clock: task.Clock | None = None, idle_timeout: float = 300.0,
            max_line: int = DEFAULT_MAX_LINE
            ) -> tuple[ChatProtocol, StringTransport, ChatFactory]:
    """A protocol from the real factory, connected to a fresh StringTransport."""
    factory = ChatFactory(dispatcher, clock or task.Clock(), idle_timeout, max_line)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, factory


def line(**frame: Any) -> bytes:
    return orjson.dumps(frame) + b"\n"


@pytest.fixture
def echo() -> Iterator[tuple[ChatProtocol, StringTransport, FakeDispatcher]]:
    dispatcher = FakeDispatcher()
    proto, transport, _ = connect(dispatcher)
    yield proto, transport, dispatcher


# -- framing ---------------------------------------------------------------


def test_several_lines_in_one_chunk_are_each_handled(echo: Any) -> None:
    """TCP merges writes: every line in one chunk is a request of its own."""
    proto, transport, dispatcher = echo
    proto.dataReceived(line(type="a", req=1) + line(type="b", req=2) + line(type="c", req=3))
    assert [m["type"] for m in dispatcher.requests] == ["a", "b", "c"]
    assert [f["req"] for f in frames(transport)] == [1, 2, 3]


def test_line_split_across_chunks_is_reassembled(echo: Any) -> None:
    """TCP splits writes: nothing is dispatched until the newline arrives."""
    proto, transport, dispatcher = echo
    data = line(type="chat", text="hello world", req=7)
    proto.dataReceived(data[:10])
    assert dispatcher.requests == [] and transport.value() == b""
    proto.dataReceived(data[10:])
    assert dispatcher.requests == [{"type": "chat", "text": "hello world", "req": 7}]
    assert frames(transport) == [{"type": "echo", "req": 7}]


def test_byte_at_a_time(echo: Any) -> None:
    """The worst split of all still yields the same requests, in order."""
    proto, transport, dispatcher = echo
    data = line(type="a", req=1, text="ünïcode ✓") + line(type="b", req=2)
    for i in range(len(data)):
        proto.dataReceived(data[i : i + 1])
    assert dispatcher.requests == [{"type": "a", "req": 1, "text": "ünïcode ✓"},
                                   {"type": "b", "req": 2}]
    assert [f["req"] for f in frames(transport)] == [1, 2]


def test_crlf_lines_are_accepted(echo: Any) -> None:
    """telnet sends CRLF; the CR must not break JSON decoding."""
    proto, transport, dispatcher = echo
    proto.dataReceived(b'{"type":"ping","req":1}\r\n{"type":"ping","req":2}\r\n')
    assert [m["req"] for m in dispatcher.requests] == [1, 2]
    assert [f["type"] for f in frames(transport)] == ["echo", "echo"]


def test_blank_lines_are_ignored(echo: Any) -> None:
    """A stray Enter in telnet neither errors nor reaches the dispatcher."""
    proto, transport, dispatcher = echo
    proto.dataReceived(b"\n\r\n   \n\t\r\n")
    assert dispatcher.requests == [] and transport.value() == b""
    proto.dataReceived(line(type="ping", req=1))
    assert frames(transport) == [{"type": "echo", "req": 1}]


@pytest.mark.parametrize("bad", [b"{nope", b"{\"type\": \"ping\"", b"\xff\xfe{}", b"ping"])
def test_bad_json_gets_an_error_and_the_connection_stays_usable(echo: Any, bad: bytes) -> None:
    """P2: bad JSON (including invalid UTF-8) is an error, not a disconnect."""
    proto, transport, dispatcher = echo
    proto.dataReceived(bad + b"\n" + line(type="ping", req=2))
    got = frames(transport)
    assert got[0]["type"] == "error" and got[0]["code"] == "bad_json"
    assert "req" not in got[0] and got[0]["message"]
    assert got[1] == {"type": "echo", "req": 2}
    assert not transport.disconnecting
    assert dispatcher.requests == [{"type": "ping", "req": 2}]


def test_every_connection_has_its_attributes_in_one_order() -> None:
    """Whatever a connection's first bytes were (one whole line, or several lines in
    one chunk, which take LineReceiver's path) and whether a request paused it, its
    attributes came into being in the same order as every other's: so all their
    instance dicts share the class's keys (an idle client's memory)."""
    dispatcher = FakeDispatcher(hold=True)
    one, _, _ = connect(dispatcher)
    one.dataReceived(line(type="ping", req=1))  # one line: straight to lineReceived
    dispatcher.release(0)
    several, _, _ = connect(dispatcher)
    several.dataReceived(line(type="ping", req=2) + line(type="ping", req=3))
    dispatcher.release(1)
    dispatcher.release(2)
    idle, _, _ = connect(FakeDispatcher())
    assert list(vars(one)) == list(vars(several)) == list(vars(idle))


def test_line_of_exactly_the_limit_is_accepted() -> None:
    """The limit is inclusive: a line of max_line bytes is still a request."""
    dispatcher = FakeDispatcher()
    proto, transport, _ = connect(dispatcher, max_line=1024)
    head = b'{"type":"x","pad":"'
    data = head + b"p" * (1024 - len(head) - 2) + b'"}'
    assert len(data) == 1024
    proto.dataReceived(data + b"\n")
    assert len(dispatcher.requests) == 1 and not transport.disconnecting


@pytest.mark.parametrize("terminated", [True, False], ids=["with_newline", "no_newline"])
def test_over_long_line_gets_error_then_close(terminated: bool) -> None:
    """P2: a line over the limit gets line_too_long and the connection closes,
    whether or not its newline ever arrives."""
    dispatcher = FakeDispatcher()
    proto, transport, _ = connect(dispatcher)
    data = b'{"type":"x","pad":"' + b"p" * DEFAULT_MAX_LINE + b'"}'
    proto.dataReceived(data + (b"\n" if terminated else b""))
    got = frames(transport)
    assert [f["code"] for f in got] == ["line_too_long"]
    assert got[0]["type"] == "error"
    assert transport.disconnecting
    assert dispatcher.requests == []


def test_over_long_line_stops_processing_the_rest_of_the_chunk() -> None:
    """Lines after the over-long one in the same chunk are not served on a closing
    connection."""
    dispatcher = FakeDispatcher()
    proto, transport, _ = connect(dispatcher, max_line=1024)
    proto.dataReceived(b"x" * 2000 + b"\n" + line(type="ping", req=1))
    assert [f["code"] for f in frames(transport)] == ["line_too_long"]
    assert dispatcher.requests == []


# -- idle timeout ----------------------------------------------------------


def test_idle_timeout_closes_a_silent_connection() -> None:
    """F12: silence past the timeout gets idle_timeout and a close, not before."""
    clock = task.Clock()
    _, transport, _ = connect(FakeDispatcher(), clock, idle_timeout=30.0)
    clock.advance(29.9)
    assert not transport.disconnecting and transport.value() == b""
    clock.advance(0.2)
    got = frames(transport)
    assert [(f["type"], f["code"]) for f in got] == [("error", "idle_timeout")]
    assert transport.disconnecting


def test_each_request_restarts_the_idle_timer() -> None:
    """A client that keeps talking is never timed out."""
    clock = task.Clock()
    proto, transport, _ = connect(FakeDispatcher(), clock, idle_timeout=30.0)
    for n in range(5):
        clock.advance(25)
        proto.dataReceived(line(type="ping", req=n))
    assert not transport.disconnecting
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting


def test_connection_lost_cancels_timer_and_tells_dispatcher() -> None:
    """A dropped connection is cleaned up once: no timer left, user logged out."""
    clock = task.Clock()
    dispatcher = FakeDispatcher()
    proto, _, factory = connect(dispatcher, clock, idle_timeout=30.0)
    assert factory.live == {proto}
    proto.connectionLost()
    assert clock.getDelayedCalls() == []
    assert dispatcher.lost == [proto.session]
    assert proto.session.closed
    assert factory.live == set()


# -- ordering and back-pressure --------------------------------------------


def test_pipelined_requests_wait_for_the_pending_one() -> None:
    """Replies leave in request order: while the first is pending the second is not
    dispatched; it is served when the first is answered."""
    dispatcher = FakeDispatcher(hold=True)
    proto, transport, _ = connect(dispatcher)
    proto.dataReceived(line(type="slow", req=1) + line(type="fast", req=2))
    assert [m["req"] for m in dispatcher.requests] == [1]
    assert transport.value() == b""

    dispatcher.release(0)
    assert [f["req"] for f in frames(transport)] == [1]
    # the buffered second line is now dispatched, and is itself pending
    assert [m["req"] for m in dispatcher.requests] == [1, 2]

    dispatcher.release(1)
    assert [f["req"] for f in frames(transport)] == [2]
    assert transport.producerState == "producing"


def test_input_piling_up_behind_a_pending_request_pauses_the_socket() -> None:
    """A pipelining client cannot make the server buffer without bound: past one
    line's worth of unread input the socket stops being read until the queue drains."""
    dispatcher = FakeDispatcher(hold=True)
    proto, transport, _ = connect(dispatcher)
    proto.dataReceived(line(type="slow", req=0))
    assert transport.producerState == "producing"  # one pending request: no syscalls
    pile = b"".join(line(type="ping", req=n, pad="x" * 1000) for n in range(1, 80))
    proto.dataReceived(pile)
    assert transport.producerState == "paused"
    dispatcher.hold = False
    dispatcher.release(0)
    assert [f["req"] for f in frames(transport)] == list(range(80))
    assert transport.producerState == "producing"


def test_data_arriving_while_paused_is_served_after_resume() -> None:
    """Bytes that arrive while a request is pending are buffered, not dropped."""
    dispatcher = FakeDispatcher(hold=True)
    proto, transport, _ = connect(dispatcher)
    proto.dataReceived(line(type="slow", req=1))
    proto.dataReceived(line(type="next", req=2)[:5])
    proto.dataReceived(line(type="next", req=2)[5:])
    assert len(dispatcher.requests) == 1
    dispatcher.hold = False
    dispatcher.release(0)
    assert [f["req"] for f in frames(transport)] == [1, 2]
    assert transport.producerState == "producing"


def test_reply_completing_after_disconnect_is_not_written() -> None:
    """A reply that completes after the client left is not written anywhere."""
    dispatcher = FakeDispatcher(hold=True)
    proto, transport, _ = connect(dispatcher)
    proto.dataReceived(line(type="slow", req=1))
    proto.connectionLost()
    dispatcher.release(0)
    assert transport.value() == b""


def test_lines_buffered_behind_a_pending_request_die_with_the_connection() -> None:
    """Once the connection is gone, requests still buffered behind a pending one
    are not dispatched for a session that no longer exists."""
    dispatcher = FakeDispatcher(hold=True)
    proto, _, _ = connect(dispatcher)
    proto.dataReceived(line(type="slow", req=1) + line(type="chat", to=2, text="x", req=2))
    proto.connectionLost()
    dispatcher.release(0)
    assert [m["req"] for m in dispatcher.requests] == [1]


@pytest.mark.logged_errors_ok
def test_failed_dispatch_is_logged_and_does_not_wedge_the_connection() -> None:
    """Should a reply Deferred ever fail, it is logged and the next request still
    gets served."""
    dispatcher = FakeDispatcher(hold=True)
    proto, transport, _ = connect(dispatcher)
    proto.dataReceived(line(type="boom", req=1) + line(type="ok", req=2))
    dispatcher.hold = False
    with capturedLogs() as events:
        dispatcher.pending[0].errback(RuntimeError("reply encoding broke"))
    failures = [e["log_failure"] for e in events if "log_failure" in e]
    assert [f.type for f in failures] == [RuntimeError]
    assert frames(transport) == [{"type": "echo", "req": 2}]
    assert transport.producerState == "producing"


# -- with the real dispatcher and storage ----------------------------------


@pytest.fixture
def real() -> Iterator[tuple[ChatProtocol, StringTransport, task.Clock]]:
    clock = task.Clock()
    services = unit_support.build_services(clock)
    proto, transport, _ = connect(services.dispatcher, clock)
    yield proto, transport, clock
    services.close()


def test_real_dispatcher_ping_and_auth_gate(real: Any) -> None:
    """The framing and the dispatcher agree on the reply shape clients see."""
    proto, transport, _ = real
    proto.dataReceived(line(type="ping", req="p") + line(type="who", req="w"))
    assert frames(transport) == [
        {"type": "pong", "req": "p"},
        {"type": "error", "req": "w", "code": "not_logged_in", "message": "log in first"},
    ]


def test_real_pipelined_chats_reply_in_order_after_commit(real: Any) -> None:
    """Three chats in one chunk: nothing is replied before the log commits, and
    then replies come in request order with increasing message ids."""
    proto, transport, clock = real
    proto.dataReceived(line(type="register", name="alice", password="secret-pw", req=1)
                       + line(type="login", name="alice", password="secret-pw", req=2))
    clock.advance(0)  # login commits pending acks before it reads the backlog
    got = frames(transport)
    assert [f["type"] for f in got] == ["register", "login", "synced"]
    uid = got[0]["id"]
    proto.dataReceived(b"".join(line(type="chat", to=uid, text=f"note {n}", req=10 + n)
                                for n in range(3)))
    assert transport.value() == b""
    clock.advance(0)
    got = [f for f in frames(transport) if "req" in f]
    assert [f["req"] for f in got] == [10, 11, 12]
    assert all(f["type"] == "chat" for f in got)
    ids = [f["id"] for f in got]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert transport.producerState == "producing"


def test_proxy_header_that_never_comes_ends_the_connection() -> None:
    """Behind a proxy, a connection that sends no PROXY header is cut after a while,
    and the chat protocol is never started for it."""
    clock = task.Clock()
    started: list[object] = []

    class Probe(Protocol):
        def connectionMade(self) -> None:
            started.append(self)

    factory = HeaderFirstFactory(Factory.forProtocol(Probe), clock)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
    proto.makeConnection(transport)
    clock.advance(HEADER_TIMEOUT - 1)
    assert not transport.disconnecting and started == []
    clock.advance(1)
    assert transport.disconnecting and started == []


def test_proxy_header_starts_the_protocol_with_the_client_it_names() -> None:
    clock = task.Clock()
    peers: list[object] = []
    lines: list[bytes] = []

    class Probe(Protocol):
        def connectionMade(self) -> None:
            peers.append(self.transport.getPeer())

        def dataReceived(self, data: bytes) -> None:
            lines.append(data)

    factory = HeaderFirstFactory(Factory.forProtocol(Probe), clock)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    proto.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1)))
    proto.dataReceived(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 6000\r\n"
                       b'{"type":"ping"}\n')
    assert [(p.host, p.port) for p in peers] == [("203.0.113.7", 40000)]  # type: ignore
    assert b"".join(lines) == b'{"type":"ping"}\n'
    clock.advance(HEADER_TIMEOUT * 2)  # the header came: no cut
    assert not proto.transport.disconnecting


def test_proxy_header_from_an_untrusted_peer_is_refused() -> None:
    """A client that reaches the daemon other than through the proxy must not name its
    own address: only peers in ``--proxy-from`` may send the header."""
    clock = task.Clock()
    started: list[object] = []

    class Probe(Protocol):
        def connectionMade(self) -> None:
            started.append(self)

    factory = HeaderFirstFactory(Factory.forProtocol(Probe), clock,
                                 trusted=parse_networks("127.0.0.1,10.0.0.0/8"))
    proto = factory.buildProtocol(IPv4Address("TCP", "192.0.2.50", 1))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.50", 1))
    proto.makeConnection(transport)
    proto.dataReceived(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 6000\r\n"
                       b'{"type":"ping"}\n')
    assert transport.disconnecting and started == []
    # a proxy inside a trusted network is heard
    proto = factory.buildProtocol(IPv4Address("TCP", "10.1.2.3", 1))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 1))
    proto.makeConnection(transport)
    proto.dataReceived(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 6000\r\n")
    assert not transport.disconnecting and len(started) == 1


def test_parse_networks_refuses_nonsense() -> None:
    assert [str(n) for n in parse_networks("127.0.0.1, ::1,10.0.0.0/8")] == [
        "127.0.0.1/32", "::1/128", "10.0.0.0/8"]
    with pytest.raises(ValueError):
        parse_networks("nginx.local")
