"""The web edge end to end: a real daemon serving the browser app and the chat over a
real WebSocket, beside its TCP port.

In-process daemons (on SQLite and MariaDB) for the chat between the two edges; one
``twistd`` process for the command line, the static files and the graceful stop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import pytest_twisted
from chatclient import ChatClient, connect
from conftest import start_daemon
from daemon_process import DaemonProcess, free_port
from tls_certs import make_pki
from twisted.internet import defer
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from wsclient import UPGRADE, BlockingWS, WSChatClient, http_get, ws_connect

import qqchat
from qqchat.app import ChatDaemon, Settings

SECURITY = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
STATIC = Path(qqchat.__file__).parent / "web" / "static"
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
         ".svg": "image/svg+xml", ".json": "application/json", ".png": "image/png"}


@dataclass
class Both:
    """A daemon with both edges, and clients on either."""

    daemon: ChatDaemon
    port: int
    web_port: int
    clients: list[ChatClient]

    async def tcp(self, name: str) -> ChatClient:
        c = await connect(self.port)
        self.clients.append(c)
        await c.ok("register", name=name, password="password1")
        await c.login(name, "password1")
        return c

    async def ws(self, name: str | None = None) -> WSChatClient:
        c = await ws_connect(self.web_port)
        self.clients.append(c)
        if name is not None:
            await c.ok("register", name=name, password="password1")
            await c.login(name, "password1")
        return c


@pytest_twisted.async_yield_fixture
async def both(settings: Settings) -> AsyncIterator[Both]:
    from twisted.internet import reactor

    daemon, port = await start_daemon(replace(settings,
                                              web_listen="tcp:0:interface=127.0.0.1"))
    web = await daemon.listener.edge_listening["web"]
    running = Both(daemon, port, web.getHost().port, [])
    yield running
    for c in running.clients:
        if c.transport is not None and c.transport.connected:
            c.close()
    if daemon.running:  # a test may have stopped it
        await defer.maybeDeferred(daemon.stopService).addTimeout(20, reactor)


async def get(port: int, path: str, headers: dict[str, str] | None = None
              ) -> tuple[int, dict[str, str], bytes]:
    from twisted.internet import reactor

    h = Headers({k: [v] for k, v in (headers or {}).items()})
    response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}{path}".encode(),
                                            h)
    body = await readBody(response)
    fields = {k.decode().lower(): v[0].decode()
              for k, v in response.headers.getAllRawHeaders()}
    return response.code, fields, body


@pytest_twisted.ensureDeferred
async def test_websocket_and_tcp_users_chat_both_ways(both: Both) -> None:
    alice = await both.ws("alice")
    bob = await both.tcp("bob")
    sent = await alice.ok("chat", to=bob.user_id, text="from the browser")
    got = await bob.push("message")
    assert (got["id"], got["from"], got["text"]) == (sent["id"], alice.user_id,
                                                     "from the browser")
    await bob.ok("ack", id=got["id"])
    sent = await bob.ok("chat", to=alice.user_id, text="from telnet")
    got = await alice.push("message")
    assert (got["id"], got["from"], got["text"]) == (sent["id"], bob.user_id, "from telnet")
    await alice.ok("ack", id=got["id"])
    who = await alice.ok("who")
    assert {u["name"] for u in who["users"]} == {"alice", "bob"}


@pytest_twisted.ensureDeferred
async def test_websocket_login_kicks_the_tcp_session_of_the_same_user(both: Both) -> None:
    tcp = await both.tcp("carol")
    web = await both.ws()
    await web.login("carol", "password1")
    kicked = await tcp.push("kicked")
    assert kicked["type"] == "kicked"
    await tcp.closed


@pytest_twisted.ensureDeferred
async def test_bad_frames_get_the_tcp_error_codes(both: Both) -> None:
    c = await both.ws()
    c.binary(b'{"type":"ping"}')
    assert (await c.push("error"))["code"] == "bad_json"
    c.text("{nope")
    assert (await c.push("error"))["code"] == "bad_json"
    assert (await c.ok("ping"))["type"] == "pong"  # still usable
    c.text('{"type":"ping","pad":"' + "x" * 70000 + '"}')
    assert (await c.push("error"))["code"] == "line_too_long"
    await c.closed


@pytest_twisted.ensureDeferred
async def test_foreign_origin_is_refused_and_every_response_has_the_headers(
        both: Both) -> None:
    status, headers, _ = await get(both.web_port, "/ws",
                                   {**UPGRADE, "Origin": "http://evil.example"})
    assert status == 403
    assert {k: headers[k] for k in SECURITY} == SECURITY
    status, headers, _ = await get(both.web_port, "/no/such/file")
    assert status == 404
    assert {k: headers[k] for k in SECURITY} == SECURITY
    status, headers, body = await get(both.web_port, "/")
    assert (status, headers["content-type"].split(";")[0]) == (200, "text/html")
    assert {k: headers[k] for k in SECURITY} == SECURITY
    assert body == (STATIC / "index.html").read_bytes()


@pytest_twisted.ensureDeferred
async def test_static_files_have_their_types(both: Both) -> None:
    files = [p for p in STATIC.rglob("*") if p.is_file() and p.suffix in TYPES]
    assert any(p.suffix == ".js" for p in files)
    for path in files:
        status, headers, body = await get(both.web_port, "/" + path.relative_to(STATIC)
                                          .as_posix())
        assert status == 200, path
        assert headers["content-type"].split(";")[0] == TYPES[path.suffix], path
        assert body == path.read_bytes()


@pytest_twisted.ensureDeferred
async def test_graceful_stop_says_goodbye_on_both_edges(both: Both) -> None:
    web = await both.ws("dave")
    tcp = await both.tcp("erin")
    await both.daemon.stopService()
    assert (await web.push("server_shutdown"))["type"] == "server_shutdown"
    assert (await tcp.push("server_shutdown"))["type"] == "server_shutdown"
    await web.closed
    await tcp.closed


@pytest.mark.settings(max_per_address=2)
@pytest_twisted.ensureDeferred
async def test_per_address_cap_is_shared_by_the_edges(both: Both) -> None:
    await both.tcp("frank")
    await both.ws("grace")
    third = await ws_connect(both.web_port)
    both.clients.append(third)
    assert (await third.push("error"))["code"] == "too_many_connections"
    await third.closed


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """The edge sits below storage and the services: SQLite is enough here."""
    return f"sqlite:///{tmp_path}/chat.db"


@pytest_twisted.ensureDeferred
async def test_wss_with_the_tls_certificate(settings: Settings, tmp_path: Path) -> None:
    from twisted.internet import reactor

    pki = make_pki(tmp_path / "pki")
    daemon, _ = await start_daemon(replace(
        settings, web_listen="tcp:0:interface=127.0.0.1", tls_cert=str(pki.cert),
        tls_key=str(pki.key)))
    try:
        web = await daemon.listener.edge_listening["web"]
        c = await ws_connect(web.getHost().port, host="localhost", ca=pki.ca)
        await c.ok("register", name="tls", password="password1")
        await c.login("tls", "password1")
        assert (await c.ok("ping"))["type"] == "pong"
        c.close()
        await c.closed
    finally:
        await defer.maybeDeferred(daemon.stopService).addTimeout(20, reactor)


def test_twistd_web_port_serves_the_app_and_the_websocket(tmp_path: Path) -> None:
    """The command line of the README: ``--web-port`` next to ``--port``; SIGTERM says
    goodbye on the WebSocket too."""
    web_port = free_port()
    with DaemonProcess(tmp_path, args=["--web-port", str(web_port),
                                       "--web-origin", "https://a.example,https://b.example"]
                       ) as daemon:
        status, headers, body = http_get(web_port, "/")
        assert status == 200 and b"<" in body
        assert {k: headers[k] for k in SECURITY} == SECURITY
        status, headers, _ = http_get(web_port, "/ws", {**UPGRADE,
                                                        "Origin": f"http://127.0.0.1:{web_port}"})
        assert status == 101
        assert {k: headers[k] for k in SECURITY} == SECURITY
        for origin, expect in (("https://b.example", 101), ("https://c.example", 403)):
            assert http_get(web_port, "/ws", {**UPGRADE, "Origin": origin})[0] == expect
        ws = BlockingWS(web_port, origin=f"http://127.0.0.1:{web_port}")
        ws.send(type="register", name="alice", password="password1", req=1)
        assert ws.recv() == {"type": "register", "req": 1, "id": 1, "name": "alice"}
        ws.send(type="login", name="alice", password="password1")
        ws.until("synced")
        daemon.stop()
        assert ws.recv() == {"type": "server_shutdown"}
        assert ws.recv() is None  # and then the close
        log = daemon.output()
        assert f"listening on 127.0.0.1:{web_port} (web)" in log
        assert "connection open from" in log and "(web)" in log
