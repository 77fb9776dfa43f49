"""The web edge: the browser app's static files, and the chat over a WebSocket at ``/ws``.

One ``twisted.web`` Site serves both. The upgrade is Twisted's
``WebSocketResource`` with wsproto's handshake; what follows is a
``ChatConnection`` like any TCP client, framed as one JSON object per text
frame. The connection reads frames itself rather than through Twisted's message
layer, which would hold a whole message, however large, before handing it over
(here a frame is refused at ``--max-line`` from its header), and whose parsing
costs several times what this does per frame (docs/benchmarks.md).
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.interfaces import ITransport
from twisted.logger import Logger
from twisted.web import http, pages, server, static
from twisted.web.resource import IResource, Resource
from twisted.web.websocket import WebSocketResource
from wsproto import ConnectionType
from wsproto.events import AcceptConnection
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from qqchat.net.connection import ChatConnection, ConnectionFactory

#: the browser app, shipped inside the package
STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"

#: on every HTTP response, the upgrade included
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"Content-Security-Policy", b"default-src 'self'; frame-ancestors 'none'"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
)
#: seconds an idle keep-alive HTTP connection (static files) may stay open
HTTP_IDLE_TIMEOUT = 60
#: a frame that stands for a binary message: not UTF-8, so refused as ``bad_json``
#: exactly as undecodable bytes are on TCP
_BINARY = b"\xff"
#: Close frame, status 1000 (normal closure), sent before the server hangs up
_CLOSE_NORMAL = b"\x88\x02\x03\xe8"

log = Logger()


def text_frame(line: bytes) -> bytes:
    """One encoded line (newline-terminated) as an unmasked, unfragmented text frame."""
    n = len(line) - 1
    if n < 126:
        head = bytes((0x81, n))
    elif n < 0x10000:
        head = b"\x81\x7e" + n.to_bytes(2, "big")
    else:
        head = b"\x81\x7f" + n.to_bytes(8, "big")
    return head + line[:-1]


def _unmask(data: bytes, key: bytes) -> bytes:
    """XOR a client frame's payload with its masking key, as one big-integer XOR."""
    n = len(data)
    if not n:
        return b""
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ mask).to_bytes(n, "big")


class WebSocketConnection(ChatConnection):
    """A browser's chat connection: the core, fed one text message per request.

    Frames are read here (RFC 6455, server side: masked frames, no extensions): a
    data frame's length is known from its header, so a message that would pass
    ``--max-line`` is refused before its payload is buffered. Complete messages are
    queued and served one at a time (``_drain``); while a request waits, more than
    one message's worth of queued input pauses the socket, as on TCP. Text is not
    checked for UTF-8 here: the JSON decoder refuses bad UTF-8 with ``bad_json``,
    exactly as on TCP.
    """

    edge = "web"
    frame_line = staticmethod(text_frame)
    goodbye = _CLOSE_NORMAL
    unit = "text frame"

    def __init__(self, factory: ConnectionFactory) -> None:
        super().__init__(factory)
        self._in = b""  # bytes of a frame not complete yet
        self._queue: deque[bytes] = deque()
        self._queued = 0  # bytes in _queue
        self._op = 0  # opcode of the message being put together from fragments, or 0
        self._pieces: list[bytes] = []
        self._piece_len = 0  # bytes so far of the message being read
        self._done_reading = False
        self._too_long = False

    def makeConnection(self, transport: ITransport) -> None:
        self.transport = transport
        # the HTTP channel registered itself as the transport's producer; the
        # connection's own watch on the send buffer takes its place
        transport.unregisterProducer()  # type: ignore[attr-defined]
        self.connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if not self._counted or self._done_reading:
            return  # refused, or closing: nothing more it says is read
        buf = self._in + data if self._in else data
        pos, size, limit = 0, len(buf), self.MAX_LENGTH
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, key_at = b1 & 0x7F, pos + 2
            if n == 126:
                if size - pos < 4:
                    break
                n, key_at = int.from_bytes(buf[pos + 2:pos + 4], "big"), pos + 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, key_at = int.from_bytes(buf[pos + 2:pos + 10], "big"), pos + 10
            op = b0 & 0x0F
            if b0 & 0x70 or not b1 & 0x80 or (op >= 8 and (n > 125 or not b0 & 0x80)):
                self._fail(1002)  # reserved bits, an unmasked frame, a bad control frame
                return
            if op < 8 and self._piece_len + n > limit:
                self._stop_input(too_long=True)  # refused before its payload is read
                break
            end = key_at + 4 + n
            if size < end:
                break  # the rest of the frame has not arrived
            payload = _unmask(buf[key_at + 4:end], buf[key_at:key_at + 4])
            pos = end
            if op == 0x1 or op == 0x2 or op == 0x0:
                if (op == 0) == (self._op == 0):
                    self._fail(1002)  # a continuation of nothing, or a message inside one
                    return
                if op:
                    self._op = op
                if not b0 & 0x80:  # more fragments to come
                    self._pieces.append(payload)
                    self._piece_len += n
                    continue
                if self._pieces:
                    self._pieces.append(payload)
                    payload = b"".join(self._pieces)
                    self._pieces = []
                message = payload if self._op == 0x1 else _BINARY
                self._op, self._piece_len = 0, 0
                self._queue.append(message)
                self._queued += len(message)
            elif op == 0x9:  # ping
                self.resetTimeout()
                self.transport.write(bytes((0x8A, n)) + payload)
            elif op == 0x8:  # close: answer with the same status, then hang up
                self._stop_input(too_long=False)
                self._queue.clear()
                self.transport.write(bytes((0x88, min(n, 2))) + payload[:2])
                self.transport.loseConnection()
                return
            elif op != 0xA:  # a pong is ignored; any other opcode is not in RFC 6455
                self._fail(1002)
                return
        self._in = buf[pos:]
        self._drain()

    def _fail(self, status: int) -> None:
        """A frame that breaks the protocol: Close with ``status`` and hang up."""
        self._stop_input(too_long=False)
        self._queue.clear()
        self.transport.write(b"\x88\x02" + status.to_bytes(2, "big"))
        self.transport.loseConnection()

    def _stop_input(self, too_long: bool) -> None:
        """Read nothing more; what is queued is served, then (if ``too_long``) the
        error for the message over the limit, and the close."""
        self._done_reading = True
        self._too_long = too_long
        self._pieces = []
        self._in = b""

    def _drain(self) -> None:
        queue = self._queue
        while queue and not self.paused:
            message = queue.popleft()
            self._queued -= len(message)
            self.lineReceived(message)
            if self.transport.disconnecting:
                queue.clear()
                return
        if not queue and self._too_long and not self.paused:
            self._too_long = False
            self.lineLengthExceeded(b"")
        elif self.paused and self._queued > self.MAX_LENGTH:
            self._pause_socket()  # a pipelining client waits in its own buffers

    def _resume_reading(self) -> None:
        self._drain()


class ConnectionMaker:
    """The ``WebSocketServerFactory`` of ``ChatWebSocketResource``: chat connections
    from the daemon's one connection core."""

    def __init__(self, core: ConnectionFactory) -> None:
        self.core = core

    def buildProtocol(self, request: server.Request) -> WebSocketConnection:
        self.core.accepted.labels(WebSocketConnection.edge).inc()
        return WebSocketConnection(self.core)


def normal_origin(origin: str) -> str | None:
    """``scheme://host[:port]``, lower case, the scheme's default port left out."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in ("http", "https", "ws", "wss") or not host or parts.path not in ("", "/"):
        return None
    if port is None or port == {"http": 80, "ws": 80, "https": 443, "wss": 443}[scheme]:
        netloc = f"[{host}]" if ":" in host else host
    else:
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{scheme}://{netloc}"


class OriginPolicy:
    """Which pages may open the WebSocket: the page's own origin (the scheme and
    Host the request came to) and those listed in ``--web-origin``.

    A request without ``Origin`` is not from a browser page (browsers always send
    it on a WebSocket), so there is no other site's page to refuse.
    """

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.extra = frozenset(o for o in (normal_origin(x) for x in extra) if o)

    def allows(self, request: server.Request) -> bool:
        origin = request.getHeader(b"origin")
        if origin is None:
            return True
        mine = normal_origin(origin.decode("latin-1"))
        if mine is None:
            return False
        if mine in self.extra:
            return True
        host = request.getHeader(b"host")
        if host is None:
            return False
        scheme = "https" if request.isSecure() else "http"
        return mine == normal_origin(f"{scheme}://{host.decode('latin-1')}")


class ChatWebSocketResource(WebSocketResource):
    """``/ws``: Twisted's WebSocket resource, with the origin check before the
    handshake and the security headers on the upgrade response."""

    def __init__(self, factory: ConnectionMaker, origins: OriginPolicy) -> None:
        super().__init__(factory)  # type: ignore[arg-type]
        self.maker = factory
        self.origins = origins

    def render_GET(self, request: server.Request) -> bytes | int:
        if not self.origins.allows(request):
            log.info("refused a WebSocket from origin {origin}",
                     origin=(request.getHeader(b"origin") or b"").decode("latin-1"))
            request.setResponseCode(http.FORBIDDEN)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"This origin may not open the chat WebSocket.\n"
        handshake = H11Handshake(ConnectionType.SERVER)
        headers = [(k, v) for k, vs in request.requestHeaders.getAllRawHeaders() for v in vs]
        try:
            handshake.initiate_upgrade_connection(headers, request.path)
        except RemoteProtocolError:
            request.setResponseCode(http.BAD_REQUEST)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"This is the chat WebSocket: connect with a WebSocket client.\n"
        accept = handshake.send(AcceptConnection(extra_headers=list(SECURITY_HEADERS)))
        conn = self.maker.buildProtocol(request)
        channel: Any = request.channel
        channel.setTimeout(None)  # the connection keeps its own idle timeout
        site = request.site
        if isinstance(site, WebSite):
            site.upgraded(channel)
        channel.transport.write(accept)  # before anything the connection says
        channel._protocolUpgradeForWebsockets(conn)
        return server.NOT_DONE_YET


class StaticFiles(static.File):
    """The app's files; no directory listings, no guessing at types."""

    contentTypes = {
        **static.File.contentTypes,
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".css": "text/css",
        ".svg": "image/svg+xml",
        ".json": "application/json",
        ".webmanifest": "application/manifest+json",
        ".png": "image/png",
        ".ico": "image/x-icon",
        ".txt": "text/plain; charset=utf-8",
        ".woff2": "font/woff2",
    }

    def __init__(self, path: str, defaultType: str = "application/octet-stream",
                 *args: Any, **kw: Any) -> None:
        super().__init__(path, defaultType, *args, **kw)
        self.indexNames = ["index.html"]

    def directoryListing(self) -> IResource:
        return pages.notFound("Not Found", "No such file.")


class SecureRequest(server.Request):
    """Every response carries the security headers, whatever resource answers."""

    def process(self) -> None:
        for name, value in SECURITY_HEADERS:
            self.setHeader(name, value)
        self.setHeader(b"Cache-Control", b"no-cache")
        super().process()


class WebSite(server.Site):
    """The browser app at ``/`` and the chat at ``/ws``.

    HTTP/1.1 channels directly, without the HTTP/2 negotiation wrapper, so an
    upgraded connection's bytes reach the chat connection with no layer between.
    """

    noisy = False
    protocol = http.HTTPChannel
    requestFactory = SecureRequest
    displayTracebacks = False

    def __init__(self, core: ConnectionFactory, origins: Iterable[str] = (),
                 static_dir: Path = STATIC_DIR) -> None:
        root: Resource = StaticFiles(str(static_dir))
        root.putChild(b"ws", ChatWebSocketResource(ConnectionMaker(core), OriginPolicy(origins)))
        super().__init__(root, timeout=HTTP_IDLE_TIMEOUT)
        #: HTTP connections not (yet) upgraded, to close on stop
        self._channels: weakref.WeakSet[http.HTTPChannel] = weakref.WeakSet()

    def buildProtocol(self, addr: Any) -> http.HTTPChannel:
        channel: http.HTTPChannel = super().buildProtocol(addr)
        self._channels.add(channel)
        return channel

    def upgraded(self, channel: http.HTTPChannel) -> None:
        self._channels.discard(channel)

    def drop_idle(self) -> None:
        """Graceful stop: close the plain HTTP connections (chat ones close themselves)."""
        for channel in list(self._channels):
            if channel.transport is not None:
                channel.loseConnection()

    def log(self, request: server.Request) -> None:
        pass  # no access log: connections are logged by the chat core
