"""JSON lines over TCP. Framing only: every decoded request goes to the dispatcher."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from qqchat.codec import DecodeError, decode, encode
from qqchat.dispatch import Dispatcher, error_frame
from qqchat.session import Session

DEFAULT_MAX_LINE = 64 * 1024
DEFAULT_IDLE_TIMEOUT = 300.0


class ChatProtocol(LineReceiver, TimeoutMixin):
    """One client connection.

    Requests are handled one at a time, in order: while one waits on storage the
    protocol pauses itself (and so the socket), which keeps replies in request
    order and bounds what a pipelining client can make us buffer.
    """

    delimiter = b"\n"
    log = Logger()

    def __init__(self, factory: ChatFactory) -> None:
        self.factory = factory
        self.MAX_LENGTH = factory.max_line
        self.callLater = factory.clock.callLater  # TimeoutMixin schedules through this
        self.session = Session(self)
        self.peer = "?"
        self._on_close: list[defer.Deferred[None]] = []

    def notifyOnClose(self, d: defer.Deferred[None]) -> None:
        """Fire ``d`` once the connection is gone (for graceful stop)."""
        if self.session.closed:
            d.callback(None)
        else:
            self._on_close.append(d)

    # -- Connection, as the session sees it -------------------------------

    def send_line(self, line: bytes) -> None:
        self.transport.write(line)

    def send_frame(self, frame: dict[str, Any]) -> None:
        self.transport.write(encode(frame))

    def close(self) -> None:
        self.transport.loseConnection()

    # -- Twisted callbacks ------------------------------------------------

    def connectionMade(self) -> None:
        addr: IAddress = self.transport.getPeer()
        self.peer = f"{getattr(addr, 'host', '?')}:{getattr(addr, 'port', '?')}"
        self.factory.live.add(self)
        self.setTimeout(self.factory.idle_timeout)
        self.log.info("connection open from {peer}", peer=self.peer)

    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        if line.endswith(b"\r"):
            line = line[:-1]  # telnet sends CRLF
        if not line.strip():
            return  # blank lines are ignored, so a stray Enter in telnet is harmless
        try:
            msg = decode(line)
        except DecodeError:
            self.send_frame(error_frame("bad_json", "each line must be one JSON object"))
            return
        d = self.factory.dispatcher.dispatch(self.session, msg)
        fired: list[bool] = []
        d.addCallback(self._replied, fired)
        d.addErrback(self._crashed)
        if not fired:
            self.pauseProducing()
            d.addBoth(self._resume)

    def _replied(self, frame: dict[str, Any] | None, fired: list[bool]) -> None:
        fired.append(True)
        if frame is not None and not self.session.closed:
            self.send_frame(frame)

    def _crashed(self, failure: Failure) -> None:
        self.log.failure("reply to {peer} failed", failure, peer=self.peer)

    def _resume(self, _: object) -> None:
        if not self.session.closed and not self.transport.disconnecting:
            self.resumeProducing()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.send_frame(error_frame(
            "line_too_long", f"a line is at most {self.MAX_LENGTH} bytes; closing"))
        self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        self.send_frame(error_frame("idle_timeout", "no data for too long; closing"))
        self.log.info("idle timeout for {peer}", peer=self.peer)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.setTimeout(None)
        self.session.closed = True
        self.factory.live.discard(self)
        self.log.info("connection closed from {peer}", peer=self.peer)
        self.factory.dispatcher.connection_lost(self.session)
        waiting, self._on_close = self._on_close, []
        for d in waiting:
            d.callback(None)


class ChatFactory(protocol.Factory):
    noisy = False

    def __init__(self, dispatcher: Dispatcher, clock: IReactorTime,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 max_line: int = DEFAULT_MAX_LINE) -> None:
        self.dispatcher = dispatcher
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_line = max_line
        self.live: set[ChatProtocol] = set()

    def buildProtocol(self, addr: IAddress) -> ChatProtocol:
        return ChatProtocol(self)
