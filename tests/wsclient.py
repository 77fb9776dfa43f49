"""The test client over a WebSocket: ``ChatClient`` fed by text frames instead of lines.

Built on Twisted's own WebSocket client, so the daemon's edge is checked against
an implementation that is not its own. Each frame the client sends is one
request; each frame it receives is handed to ``ChatClient.lineReceived``.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from chatclient import ChatClient
from twisted.internet.ssl import Certificate
from twisted.python.failure import Failure
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.websocket import WebSocketClientEndpoint, WebSocketTransport


class _FrameTransport:
    """What ChatClient writes to: every line it writes leaves as one text frame."""

    def __init__(self, ws: WebSocketTransport) -> None:
        self.ws = ws
        self.connected = True
        self.frames_sent = 0

    def write(self, data: bytes) -> None:
        for line in data.split(b"\n"):
            if line:
                self.ws.sendTextMessage(line.decode())
                self.frames_sent += 1

    def loseConnection(self) -> None:
        self.connected = False
        self.ws.loseConnection()


class WSChatClient(ChatClient):
    """A ChatClient whose wire is a WebSocket; ``text`` and ``binary`` send raw frames."""

    def __init__(self) -> None:
        super().__init__()
        self.ws: WebSocketTransport | None = None

    # WebSocketProtocol
    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self.ws = transport
        self.transport = _FrameTransport(transport)

    def negotiationFinished(self) -> None:
        pass

    def textMessageReceived(self, message: str) -> None:
        assert "\n" not in message, message  # one JSON object per frame, nothing after
        self.lineReceived(message.encode())

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        raise AssertionError(f"the server sent a binary frame: {data!r}")

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        if isinstance(self.transport, _FrameTransport):
            self.transport.connected = False
        super().connectionLost(reason if isinstance(reason, Failure) else None)

    def text(self, data: str) -> None:
        assert self.ws is not None
        self.ws.sendTextMessage(data)

    def binary(self, data: bytes) -> None:
        assert self.ws is not None
        self.ws.sendBytesMessage(data)


class _Maker:
    def __init__(self, client: WSChatClient) -> None:
        self.client = client

    def buildProtocol(self, url: str) -> WSChatClient:
        return self.client


async def ws_connect(port: int, host: str = "127.0.0.1", path: str = "/ws",
                     ca: Path | None = None) -> WSChatClient:
    """A client of ``ws://host:port/ws``, or ``wss://`` trusting only ``ca``."""
    from twisted.internet import reactor

    if ca is None:
        endpoint = WebSocketClientEndpoint.new(reactor, f"ws://{host}:{port}{path}",
                                               connectTimeout=5)
    else:
        policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(ca.read_bytes()))
        endpoint = WebSocketClientEndpoint.new(reactor, f"wss://{host}:{port}{path}",
                                               tlsPolicy=policy, connectTimeout=5)
    client: WSChatClient = await endpoint.connect(_Maker(WSChatClient()))
    return client


def http_get(port: int, path: str, headers: dict[str, str] | None = None,
             host: str = "127.0.0.1", timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.0-style exchange on a plain socket: status, headers (lower-case
    names), body. For the upgrade, the body is whatever followed the headers."""
    head = {"Host": f"{host}:{port}", "Connection": "close", **(headers or {})}
    request = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items())
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request.encode() + b"\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        top, _, rest = data.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip()
                  for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        if status != 101:
            length = int(fields.get("content-length", "-1"))
            while length < 0 or len(rest) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
    return status, fields, rest


UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


class BlockingWS:
    """A WebSocket client on a plain blocking socket (wsproto), for tests that drive
    daemons in other processes: nginx in front, or ``twistd`` itself."""

    def __init__(self, port: int, host: str = "127.0.0.1", path: str = "/ws",
                 origin: str | None = None, timeout: float = 10.0) -> None:
        from wsproto import WSConnection
        from wsproto.connection import ConnectionType
        from wsproto.events import Request

        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        extra = [("Origin", origin)] if origin else []
        self.sock.sendall(self.ws.send(Request(host=f"{host}:{port}", target=path,
                                               extra_headers=extra)))
        self.pending: list[Any] = []
        self.accepted = None
        while self.accepted is None:
            self._read()

    def _read(self) -> None:
        from wsproto.events import AcceptConnection, RejectConnection

        data = self.sock.recv(65536)
        self.ws.receive_data(data or None)
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.accepted = event
            elif isinstance(event, RejectConnection):
                raise ConnectionRefusedError(f"upgrade refused: {event.status_code}")
            else:
                self.pending.append(event)
        if not data and self.accepted is None:
            raise ConnectionError("closed during the handshake")

    def send(self, **frame: Any) -> None:
        from wsproto.events import TextMessage

        self.sock.sendall(self.ws.send(TextMessage(json.dumps(frame))))

    def recv(self) -> dict[str, Any] | None:
        """The next JSON frame, or None once the server has closed."""
        from wsproto.events import CloseConnection, TextMessage

        text = ""
        while True:
            while self.pending:
                event = self.pending.pop(0)
                if isinstance(event, TextMessage):
                    text += event.data
                    if event.message_finished:
                        frame: dict[str, Any] = json.loads(text)
                        return frame
                elif isinstance(event, CloseConnection):
                    return None
            self._read()

    def until(self, type: str) -> dict[str, Any]:
        while True:
            frame = self.recv()
            assert frame is not None, f"closed before a {type!r} frame"
            if frame.get("type") == type:
                return frame

    def close(self) -> None:
        self.sock.close()
