"""JSON lines over TCP: the line framing on top of the connection core."""

from __future__ import annotations

from twisted.protocols.basic import LineReceiver

from qqchat.net.connection import (
    CLOSE_GRACE,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_PER_ADDRESS,
    DEFAULT_RATE_BURST,
    DEFAULT_RATE_LIMIT,
    DEFAULT_SEND_BUFFER,
    ChatConnection,
    ConnectionFactory,
)

__all__ = [
    "CLOSE_GRACE",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_PER_ADDRESS",
    "DEFAULT_RATE_BURST",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_SEND_BUFFER",
    "ChatFactory",
    "ChatProtocol",
]


class ChatProtocol(ChatConnection, LineReceiver):
    """One TCP client: LineReceiver cuts the stream at ``\\n`` and hands each line to
    ``ChatConnection.lineReceived``; lines go out as they are, newline included."""

    delimiter = b"\n"
    edge = "tcp"

    def __init__(self, factory: ConnectionFactory) -> None:
        super().__init__(factory)
        # LineReceiver's state, on the instance from the start (see ChatConnection:
        # one order of attributes for every connection)
        self._buffer = b""
        self._busyReceiving = False

    def _resume_reading(self) -> None:
        if self._buffer:
            self.dataReceived(b"")  # the lines that arrived meanwhile

    def dataReceived(self, data: bytes) -> None:
        if not self._counted:
            return  # refused: nothing it says is read
        end = len(data) - 1
        if (0 < end < self.MAX_LENGTH and data.find(b"\n") == end and not self._buffer
                and not self.paused and not self._busyReceiving):
            # one whole line, nothing before it (what a client waiting for each reply
            # sends): LineReceiver would find the same line, through more steps
            self.lineReceived(data[:-1])
            return
        LineReceiver.dataReceived(self, data)
        if self.paused and len(self._buffer) > self.MAX_LENGTH:
            self._pause_socket()  # a pipelining client waits in its own buffers


class ChatFactory(ConnectionFactory):
    """The connection core, building TCP connections when it listens itself."""

    protocol = ChatProtocol
