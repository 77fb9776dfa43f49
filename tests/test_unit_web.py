"""The web edge on StringTransport: the HTTP upgrade through the real Site, then the
chat core framed as WebSocket text frames.

Frames are made and read with wsproto's client side, so the server's framing is
checked against an implementation that is not its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import unit_support
from test_unit_protocol import FakeDispatcher
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage

from qqchat.codec import encode
from qqchat.metrics import Registry
from qqchat.net.connection import ConnectionFactory
from qqchat.net.protocol import ChatFactory
from qqchat.net.web import WebSite, normal_origin, text_frame

HOST = "127.0.0.1:8080"
UPGRADE = ("GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "{extra}\r\n")
SECURITY = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def http_head(data: bytes) -> tuple[int, dict[str, str], bytes]:
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip()
              for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), fields, rest


@dataclass
class Browser:
    """One client of the site: the HTTP channel on a StringTransport, and after the
    upgrade a wsproto client reading what the server wrote."""

    transport: StringTransport
    channel: Any
    status: int
    headers: dict[str, str]
    ws: Connection = field(default_factory=lambda: Connection(ConnectionType.CLIENT))

    def send(self, event: Event) -> None:
        self.channel.dataReceived(self.ws.send(event))

    def text(self, data: str) -> None:
        self.send(TextMessage(data))

    def request(self, **frame: Any) -> None:
        self.text(orjson.dumps(frame).decode())

    def events(self) -> list[Event]:
        self.ws.receive_data(self.transport.value())
        self.transport.clear()
        return list(self.ws.events())

    def frames(self) -> list[dict[str, Any]]:
        """The JSON frames written since last asked; every one a whole text message."""
        out = []
        for e in self.events():
            if isinstance(e, TextMessage):
                assert e.message_finished and "\n" not in e.data, e
                out.append(orjson.loads(e.data))
            elif not isinstance(e, CloseConnection):
                raise AssertionError(f"unexpected {e!r}")
        return out


@dataclass
class Web:
    site: WebSite
    core: ConnectionFactory
    clock: task.Clock

    def open(self, origin: str | None = None, host: str = HOST, peer_port: int = 4321,
             path: str = "/ws") -> Browser:
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", peer_port))
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", peer_port))
        channel.makeConnection(transport)
        extra = f"Origin: {origin}\r\n" if origin else ""
        request = UPGRADE.format(host=host, extra=extra).replace("/ws", path, 1)
        channel.dataReceived(request.encode())
        status, headers, rest = http_head(transport.value())
        transport.clear()
        browser = Browser(transport, channel, status, headers)
        if status == 101:
            browser.transport.write(rest)  # anything after the headers is frames
        return browser


def make_web(dispatcher: Any, tmp_path: Path, clock: task.Clock | None = None,
             origins: tuple[str, ...] = (), **limits: Any) -> Web:
    clock = clock or task.Clock()
    core = ChatFactory(dispatcher, clock, metrics=Registry(), **limits)
    static = tmp_path / "static"
    static.mkdir(exist_ok=True)
    (static / "index.html").write_text("<!doctype html><title>t</title>")
    return Web(WebSite(core, origins, static), core, clock)


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[tuple[Web, FakeDispatcher]]:
    dispatcher = FakeDispatcher()
    yield make_web(dispatcher, tmp_path), dispatcher


# -- the upgrade and the origin rule ------------------------------------------------


def test_same_origin_upgrade_carries_the_security_headers(echo: Any) -> None:
    web, _ = echo
    b = web.open(origin=f"http://{HOST}")
    assert b.status == 101
    assert b.headers["upgrade"].lower() == "websocket"
    for name, value in SECURITY.items():
        assert b.headers[name] == value
    assert len(web.core.live) == 1


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1:8081",
                                    "https://127.0.0.1:8080", "null", "not an origin"])
def test_foreign_origin_is_refused_with_403_and_no_connection(echo: Any, origin: str) -> None:
    web, dispatcher = echo
    b = web.open(origin=origin)
    assert b.status == 403
    for name, value in SECURITY.items():
        assert b.headers[name] == value
    assert web.core.live == set() and dispatcher.requests == []


def test_listed_origin_and_no_origin_may_upgrade(tmp_path: Path) -> None:
    web = make_web(FakeDispatcher(), tmp_path, origins=("https://chat.example.com",))
    assert web.open(origin="https://chat.example.com").status == 101
    assert web.open(origin="https://CHAT.example.com:443").status == 101
    assert web.open(origin="https://other.example.com").status == 403
    assert web.open(origin=None).status == 101  # not a browser page: nothing to protect


def test_plain_get_on_ws_and_unknown_paths_carry_the_headers(echo: Any) -> None:
    web, _ = echo
    for path in ("/nope", "/js/missing.js"):
        transport = StringTransport()
        channel = web.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        channel.makeConnection(transport)
        channel.dataReceived(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        status, headers, _ = http_head(transport.value())
        assert status == 404
        assert {k: headers[k] for k in SECURITY} == SECURITY
        channel.connectionLost(None)
    transport = StringTransport()
    channel = web.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    channel.makeConnection(transport)
    channel.dataReceived(f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    status, headers, _ = http_head(transport.value())
    assert status == 400 and headers["x-content-type-options"] == "nosniff"
    channel.connectionLost(None)


@pytest.mark.parametrize(("given", "normal"), [
    ("http://Example.com:80", "http://example.com"),
    ("https://example.com:8443/", "https://example.com:8443"),
    ("http://[::1]:8080", "http://[::1]:8080"),
    ("http://example.com/path", None),
    ("ftp://example.com", None),
    ("null", None),
])
def test_origins_compare_by_scheme_host_and_effective_port(given: str,
                                                           normal: str | None) -> None:
    assert normal_origin(given) == normal


# -- framing -------------------------------------------------------------------------


def test_text_frame_is_dispatched_and_answered_in_one_text_frame(echo: Any) -> None:
    web, dispatcher = echo
    b = web.open()
    b.request(type="ping", req=1)
    b.request(type="who", req="two")
    assert dispatcher.requests == [{"type": "ping", "req": 1}, {"type": "who", "req": "two"}]
    assert b.frames() == [{"type": "echo", "req": 1}, {"type": "echo", "req": "two"}]


def test_fragmented_message_is_one_request(echo: Any) -> None:
    web, dispatcher = echo
    b = web.open()
    b.send(TextMessage('{"type":"chat","te', message_finished=False))
    assert dispatcher.requests == []
    b.send(TextMessage('xt":"ünï ✓","req":3}', message_finished=True))
    assert dispatcher.requests == [{"type": "chat", "text": "ünï ✓", "req": 3}]
    assert b.frames() == [{"type": "echo", "req": 3}]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_server_frames_of_every_length_class_parse(size: int) -> None:
    line = encode({"type": "x", "pad": "p" * size})
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(text_frame(line))
    events = list(client.events())
    assert len(events) == 1 and isinstance(events[0], TextMessage)
    assert events[0].data.encode() == line[:-1]


def test_binary_frame_is_refused_as_bad_json_and_the_connection_stays(echo: Any) -> None:
    web, dispatcher = echo
    b = web.open()
    b.send(BytesMessage(b'{"type":"ping","req":1}'))
    b.request(type="ping", req=2)
    got = b.frames()
    assert [(f["type"], f.get("code")) for f in got] == [("error", "bad_json"), ("echo", None)]
    assert "req" not in got[0]
    assert dispatcher.requests == [{"type": "ping", "req": 2}]
    assert not b.transport.disconnecting


@pytest.mark.parametrize("bad", ["{nope", "[1,", "ping"])
def test_bad_json_gets_bad_json(echo: Any, bad: str) -> None:
    web, _ = echo
    b = web.open()
    b.text(bad)
    assert [f["code"] for f in b.frames()] == ["bad_json"]
    assert not b.transport.disconnecting


def test_frame_of_exactly_the_limit_is_a_request(tmp_path: Path) -> None:
    dispatcher = FakeDispatcher()
    web = make_web(dispatcher, tmp_path, max_line=1024)
    b = web.open()
    head = '{"type":"x","pad":"'
    b.text(head + "p" * (1024 - len(head) - 2) + '"}')
    assert len(dispatcher.requests) == 1 and not b.transport.disconnecting


def test_frame_over_the_limit_gets_line_too_long_then_close(tmp_path: Path) -> None:
    dispatcher = FakeDispatcher()
    web = make_web(dispatcher, tmp_path, max_line=1024)
    b = web.open()
    b.text('{"type":"x","pad":"' + "é" * 600 + '"}')  # 600 characters, 1200 bytes
    events = b.events()
    assert orjson.loads(events[0].data)["code"] == "line_too_long"  # type: ignore[attr-defined]
    assert isinstance(events[1], CloseConnection) and events[1].code == 1000
    assert b.transport.disconnecting and dispatcher.requests == []


def test_over_long_message_is_cut_off_while_its_fragments_arrive(tmp_path: Path) -> None:
    """A message is refused once its fragments pass the limit, not when it ends."""
    dispatcher = FakeDispatcher()
    web = make_web(dispatcher, tmp_path, max_line=1024)
    b = web.open()
    for _ in range(3):
        b.send(TextMessage("x" * 400, message_finished=False))
    tail = b.ws.send(TextMessage("}", message_finished=True))
    assert [f["code"] for f in b.frames()] == ["line_too_long"]
    assert b.transport.disconnecting
    b.channel.dataReceived(tail)  # nothing more is read
    assert dispatcher.requests == [] and b.transport.value() == b""


def test_pre_encoded_push_leaves_as_one_text_frame(echo: Any) -> None:
    web, _ = echo
    b = web.open()
    (conn,) = web.core.live
    conn.session.send_line(b'{"type":"message","id":7,"from":1,"text":"hi","ts":1,"to":2}\n')
    conn.session.send({"type": "presence", "id": 1, "online": True})
    assert b.frames() == [{"type": "message", "id": 7, "from": 1, "text": "hi", "ts": 1, "to": 2},
                          {"type": "presence", "id": 1, "online": True}]


def test_ping_gets_pong_and_client_close_gets_close(echo: Any) -> None:
    web, dispatcher = echo
    b = web.open()
    b.send(Ping(b"hb"))
    assert [type(e) for e in b.events()] == [Pong]
    b.send(CloseConnection(1000))
    events = b.events()
    assert isinstance(events[0], CloseConnection)
    assert b.transport.disconnecting
    (conn,) = web.core.live
    conn.connectionLost()
    assert dispatcher.lost == [conn.session] and web.core.live == set()


# -- the connection core, on this edge --------------------------------------------------


def test_idle_timeout_closes_a_silent_web_connection(tmp_path: Path) -> None:
    clock = task.Clock()
    web = make_web(FakeDispatcher(), tmp_path, clock, idle_timeout=30.0)
    b = web.open()
    clock.advance(29)
    b.request(type="ping", req=1)
    clock.advance(29)
    assert [f["type"] for f in b.frames()] == ["echo"] and not b.transport.disconnecting
    clock.advance(1.5)
    events = b.events()
    assert orjson.loads(events[0].data)["code"] == "idle_timeout"  # type: ignore[attr-defined]
    assert isinstance(events[1], CloseConnection)
    assert b.transport.disconnecting


def test_requests_wait_for_the_pending_one_and_piled_input_pauses_the_socket(
        tmp_path: Path) -> None:
    dispatcher = FakeDispatcher(hold=True)
    web = make_web(dispatcher, tmp_path)
    b = web.open()
    b.request(type="slow", req=0)
    b.request(type="next", req=1)
    assert [m["req"] for m in dispatcher.requests] == [0]
    assert b.transport.producerState == "producing"
    for n in range(2, 80):
        b.request(type="ping", req=n, pad="x" * 1000)
    assert b.transport.producerState == "paused"
    dispatcher.hold = False
    dispatcher.release(0)
    assert [f["req"] for f in b.frames()] == list(range(80))
    assert b.transport.producerState == "producing"


def test_slow_reader_is_cut_off_past_the_send_buffer_cap(tmp_path: Path) -> None:
    web = make_web(FakeDispatcher(), tmp_path, max_send_buffer=64 * 1024)
    b = web.open()
    (conn,) = web.core.live
    aborted: list[bool] = []
    b.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    b.transport.producer.pauseProducing()  # what the transport does when it cannot write
    push = encode({"type": "message", "id": 1, "from": 1, "text": "x" * 1000, "ts": 1, "to": 2})
    for _ in range(60):
        conn.session.send_line(push)
    assert not aborted
    for _ in range(10):
        conn.session.send_line(push)
    assert aborted == [True] and conn.session.closed


def test_rate_limit_applies_per_web_connection(tmp_path: Path) -> None:
    web = make_web(FakeDispatcher(), tmp_path, rate_limit=1, rate_burst=2)
    b = web.open()
    for n in range(3):
        b.request(type="ping", req=n)
    got = b.frames()
    assert [f["type"] for f in got] == ["echo", "echo", "error"]
    assert got[2]["code"] == "rate_limited" and got[2]["req"] == 2


def test_per_address_cap_counts_both_edges(tmp_path: Path) -> None:
    """One table for every edge: a TCP connection and a WebSocket from one address
    share its cap, and the one too many is told so in its own framing."""
    dispatcher = FakeDispatcher()
    web = make_web(dispatcher, tmp_path, max_per_address=1)
    tcp = web.core.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    tcp.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1)))
    b = web.open()
    assert b.status == 101
    events = b.events()
    assert orjson.loads(events[0].data)["code"] == "too_many_connections"  # type: ignore
    assert isinstance(events[1], CloseConnection) and b.transport.disconnecting
    assert web.core.live == {tcp}


def test_metrics_count_connections_and_requests_by_edge(tmp_path: Path) -> None:
    reg = Registry()
    dispatcher = FakeDispatcher()
    clock = task.Clock()
    core = ChatFactory(dispatcher, clock, metrics=reg)
    (tmp_path / "s").mkdir()
    web = Web(WebSite(core, (), tmp_path / "s"), core, clock)
    b = web.open()
    b.request(type="ping", req=1)
    b.text("{bad")
    tcp = core.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2))
    tcp.makeConnection(StringTransport())
    tcp.dataReceived(b'{"type":"ping"}\n')
    text = reg.render().decode()
    for sample in ('qqchat_connections_open{edge="web"} 1', 'qqchat_connections_open{edge="tcp"} 1',
                   'qqchat_connections_accepted_total{edge="web"} 1',
                   'qqchat_edge_requests_total{edge="web"} 2',
                   'qqchat_edge_requests_total{edge="tcp"} 1'):
        assert sample in text.splitlines(), text


# -- with the real dispatcher --------------------------------------------------------


def test_real_dispatcher_register_login_chat_over_websocket(tmp_path: Path) -> None:
    clock = task.Clock()
    services = unit_support.build_services(clock)
    try:
        web = make_web(services.dispatcher, tmp_path, clock)
        alice, bob = web.open(peer_port=1), web.open(peer_port=2)
        for who, name in ((alice, "alice"), (bob, "bob")):
            who.request(type="register", name=name, password="secret-pw", req="r")
            who.request(type="login", name=name, password="secret-pw", req="l")
            clock.advance(0)
            assert [f["type"] for f in who.frames()] == ["register", "login", "synced"]
        alice.request(type="chat", to=2, text="hi bob", req=5)
        clock.advance(0)
        assert alice.frames()[0]["req"] == 5
        (push,) = bob.frames()
        assert (push["type"], push["text"], push["from"]) == ("message", "hi bob", 1)
    finally:
        services.close()


def test_oversize_frame_is_refused_from_its_header_alone(tmp_path: Path) -> None:
    """A frame announcing more than --max-line bytes is refused before any of its
    payload is read or held."""
    dispatcher = FakeDispatcher()
    web = make_web(dispatcher, tmp_path, max_line=1024)
    b = web.open()
    b.channel.dataReceived(b"\x81\xff" + (1 << 30).to_bytes(8, "big") + b"mask")
    assert [f["code"] for f in b.frames()] == ["line_too_long"]
    assert b.transport.disconnecting and dispatcher.requests == []


def test_invalid_utf8_text_is_bad_json_as_on_tcp(echo: Any) -> None:
    web, dispatcher = echo
    b = web.open()
    raw = b'{"type":"ping","x":"\xff"}'
    b.channel.dataReceived(bytes((0x81, 0x80 | len(raw))) + b"\0\0\0\0" + raw)
    assert [f["code"] for f in b.frames()] == ["bad_json"]
    assert dispatcher.requests == [] and not b.transport.disconnecting


@pytest.mark.parametrize("frame", [
    b"\x81\x02{}",  # not masked
    b"\xc1\x82\0\0\0\0{}",  # a reserved bit set
    b"\x80\x82\0\0\0\0{}",  # a continuation of nothing
    b"\x83\x80\0\0\0\0",  # an opcode RFC 6455 does not have
])
def test_frames_that_break_the_protocol_get_close_1002(echo: Any, frame: bytes) -> None:
    web, dispatcher = echo
    b = web.open()
    b.channel.dataReceived(frame)
    (event,) = b.events()
    assert isinstance(event, CloseConnection) and event.code == 1002
    assert b.transport.disconnecting and dispatcher.requests == []
