"""The connection to the daemon: JSON lines, requests matched to replies by ``req``.

A reply is any frame that echoes the ``req`` of a pending request (errors
included); every other frame is a push. The server answers one request at a
time and in order, so requests may be sent without waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IReactorTime
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

Frame = dict[str, Any]


class ChatClientProtocol(LineReceiver):
    """Sends requests, fires their Deferreds with the reply frame, hands pushes on."""

    delimiter = b"\n"
    #: the login summary of a user in many big groups is one long line
    MAX_LENGTH = 64 * 1024 * 1024

    def __init__(self, clock: IReactorTime, on_push: Callable[[Frame], None],
                 on_lost: Callable[[Failure], None],
                 on_line: Callable[[str, bytes], None] | None = None) -> None:
        self._clock = clock
        self._on_push = on_push
        self._on_lost = on_lost
        #: sees every line sent (">") and received ("<"), for --raw
        self._on_line = on_line
        self._pending: dict[int, defer.Deferred[Frame]] = {}
        self._next_req = 1
        self.lost: defer.Deferred[None] = defer.Deferred()
        #: between connectionMade and connectionLost (Protocol.connected is never reset)
        self.is_open = False
        #: when the last request went out, so keepalive pings are only sent when idle
        self.last_sent = clock.seconds()

    def connectionMade(self) -> None:
        self.is_open = True

    def request(self, frame: Frame) -> defer.Deferred[Frame]:
        """Send ``frame`` with a fresh ``req``; fires with the reply (maybe an error frame),
        or fails with ConnectionLost."""
        if not self.is_open:
            return defer.fail(error.ConnectionLost("not connected"))
        req = self._next_req
        self._next_req += 1
        d: defer.Deferred[Frame] = defer.Deferred()
        self._pending[req] = d
        line = orjson.dumps({**frame, "req": req})
        if self._on_line is not None:
            self._on_line(">", line)
        self.sendLine(line)
        self.last_sent = self._clock.seconds()
        return d

    def lineReceived(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            return
        if self._on_line is not None:
            self._on_line("<", line)
        try:
            frame = orjson.loads(line)
        except orjson.JSONDecodeError:
            frame = None
        if not isinstance(frame, dict):
            self._on_push({"type": "error", "code": "bad_frame",
                           "message": "the server sent a line that is not a JSON object"})
            return
        req = frame.get("req")
        d = self._pending.pop(req, None) if isinstance(req, int) else None
        if d is not None:
            d.callback(frame)
        else:
            self._on_push(frame)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._on_push({"type": "error", "code": "bad_frame",
                       "message": "the server sent a line too long to read; disconnecting"})
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.is_open = False
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(error.ConnectionLost("connection lost before the reply"))
        self._on_lost(reason)
        self.lost.callback(None)
