"""JSON lines over TCP. Framing only: every decoded request goes to the dispatcher."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, tcp
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from qqchat.codec import DecodeError, decode, encode
from qqchat.dispatch import Dispatcher, error_frame
from qqchat.metrics import Registry
from qqchat.ratelimit import TokenBucket
from qqchat.session import Session

DEFAULT_MAX_LINE = 64 * 1024
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_SEND_BUFFER = 4 * 1024 * 1024
#: requests a second per connection, and how many may come at once: far above what a
#: person types, low enough that one connection cannot monopolise a core
DEFAULT_RATE_LIMIT = 200.0
DEFAULT_RATE_BURST = 400
_UNDECODABLE = object()
#: connections one client address may hold at once (0: no cap)
DEFAULT_MAX_PER_ADDRESS = 200
#: how long a closing connection may take to flush before it is cut
CLOSE_GRACE = 5.0


@implementer(IPushProducer)
class _WriteWatch:
    """Registered on the transport to learn when the client stops reading.

    The transport pauses its producer once its send buffer passes its high-water
    mark; the protocol then stops reading requests and counts what it still has
    to write. A separate object, because the protocol's own pause/resume is
    busy keeping requests in order.
    """

    def __init__(self, proto: ChatProtocol) -> None:
        self.proto = proto

    def pauseProducing(self) -> None:
        self.proto._write_blocked()

    def resumeProducing(self) -> None:
        self.proto._write_unblocked()

    def stopProducing(self) -> None:
        pass


class ChatProtocol(LineReceiver, TimeoutMixin):
    """One client connection.

    Requests are handled one at a time, in order: while one waits on storage the
    protocol pauses itself (and so the socket), which keeps replies in request
    order and bounds what a pipelining client can make us buffer. A client that
    stops reading is cut off once ``max_send_buffer`` bytes wait for it; what was
    meant for it stays in the message log for its next login.
    """

    delimiter = b"\n"
    log = Logger()

    def __init__(self, factory: ChatFactory) -> None:
        self.factory = factory
        self.MAX_LENGTH = factory.max_line
        self.callLater = factory.clock.callLater  # TimeoutMixin schedules through this
        self.session = Session(self)
        self.peer = "?"
        self.address = "?"
        self._counted = False
        self._on_close: list[defer.Deferred[None]] = []
        self._pauses: set[str] = set()
        self._inflight: defer.Deferred[Any] | None = None
        self._blocked_bytes: int | None = None  # None while the client keeps up
        self._writable: list[defer.Deferred[None]] = []
        self._abort_call: IDelayedCall | None = None
        self._lost = False
        self._socket_paused = False
        #: the plain TCP transport, when lines may be sent on its socket directly
        self._tcp: tcp.Connection | None = None
        self.stopping = False
        self._bucket = TokenBucket(factory.rate_limit, factory.rate_burst,
                                   factory.clock.seconds())

    # -- Connection, as the session sees it -------------------------------

    def send_line(self, line: bytes) -> None:
        if self.session.closed:
            return
        if self._blocked_bytes is not None:
            self._blocked_bytes += len(line)
            if self._blocked_bytes > self.factory.max_send_buffer:
                self.log.info("{peer} is not reading; disconnecting", peer=self.peer)
                self.session.closed = True
                self.transport.abortConnection()
                return
        if line.startswith(b'{"type":"message"'):
            self.factory.count_push(line)
        t = self._tcp
        if t is not None and not t._tempDataBuffer and not t.dataBuffer and not t.disconnecting:
            # Nothing queued: hand the line to the kernel now. Through transport.write
            # it would cost registering the socket for writing and unregistering it
            # once sent (two epoll_ctl calls and a reactor pass) for every line.
            try:
                sent = t.socket.send(line)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = 0  # the transport's own write finds the error and reports it
            if sent == len(line):
                return
            line = line[sent:]
        self.transport.write(line)

    def send_frame(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "error":
            self.factory.errors.labels(frame["code"]).inc()
        self.send_line(encode(frame))

    def close(self) -> None:
        """Close after flushing, but never wait on a client that does not read."""
        if self._lost:
            return
        # with a producer registered the transport would wait for it forever
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        if self._socket_paused:
            # a TLS transport closes only once it reads the client's close_notify
            self._socket_paused = False
            self.transport.resumeProducing()
        if self._abort_call is None and not self.session.closed:
            self._abort_call = self.callLater(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        if not self.session.closed:
            self.transport.abortConnection()

    def writable(self) -> defer.Deferred[None]:
        if self._blocked_bytes is None or self.session.closed:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._writable.append(d)
        return d

    def notifyOnClose(self, d: defer.Deferred[None]) -> None:
        """Fire ``d`` once the connection is gone (for graceful stop)."""
        if self._lost:
            d.callback(None)
        else:
            self._on_close.append(d)

    # -- flow control -----------------------------------------------------

    # Waiting on a request only stops the line loop (``self.paused``); the socket
    # itself is paused only when a reason needs it (the client does not read, the
    # server is stopping) or unread input piles up. Pausing the socket for every
    # request would cost two epoll_ctl calls a message.

    def _pause(self, reason: str) -> None:
        self._pauses.add(reason)
        self.paused = True
        if reason != "request":
            self._pause_socket()

    def _unpause(self, reason: str) -> None:
        self._pauses.discard(reason)
        if self._pauses or self.session.closed or self.transport.disconnecting:
            return
        self.paused = False
        if self._socket_paused:
            self._socket_paused = False
            self.transport.resumeProducing()
        self.dataReceived(b"")  # the lines that arrived meanwhile

    def _pause_socket(self) -> None:
        if not self._socket_paused:
            self._socket_paused = True
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if not self._counted:
            return  # refused: nothing it says is read
        super().dataReceived(data)
        if self.paused and len(self._buffer) > self.MAX_LENGTH:
            self._pause_socket()  # a pipelining client waits in its own buffers

    def _write_blocked(self) -> None:
        # the transport calls this on every write past its high-water mark
        if self._blocked_bytes is None:
            self._blocked_bytes = 0
            self._pause("write")

    def _write_unblocked(self) -> None:
        self._blocked_bytes = None
        waiting, self._writable = self._writable, []
        for d in waiting:
            d.callback(None)
        self._unpause("write")

    def stop_reading(self) -> defer.Deferred[None]:
        """For graceful stop: read no more requests; fires when the one in hand is done."""
        self.stopping = True
        self._pause("stop")
        done: defer.Deferred[None] = defer.Deferred()
        if self._inflight is None:
            done.callback(None)
        else:
            self._inflight.addBoth(lambda r: (done.callback(None), r)[1])
        return done

    # -- Twisted callbacks ------------------------------------------------

    def connectionMade(self) -> None:
        addr: IAddress = self.transport.getPeer()
        self.address = str(getattr(addr, "host", "?"))
        self.peer = f"{self.address}:{getattr(addr, 'port', '?')}"
        if not self.factory.admit(self.address):
            self.log.info("refused {peer}: too many connections from its address",
                          peer=self.peer)
            self.factory.errors.labels("too_many_connections").inc()
            self.transport.write(encode(error_frame(
                "too_many_connections", "too many connections from your address; closing")))
            self.session.closed = True
            self.transport.loseConnection()
            return
        self._counted = True
        self.factory.live.add(self)
        # chat lines are small and latency matters: do not let Nagle hold them back
        # (on the TCP transport under any TLS or PROXY-protocol wrapper)
        tcp_transport = self.transport
        while tcp_transport is not None and not ITCPTransport.providedBy(tcp_transport):
            tcp_transport = getattr(tcp_transport, "transport", None)
        if tcp_transport is not None:
            tcp_transport.setTcpNoDelay(True)
        if isinstance(self.transport, tcp.Connection):
            self._tcp = self.transport
        self.transport.registerProducer(_WriteWatch(self), True)
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
            msg = _UNDECODABLE  # not None: the line `null` is JSON, just not an object
        wait = self._bucket.take(self.factory.clock.seconds())
        if wait:
            self._refuse(msg, wait)
            return
        if msg is _UNDECODABLE:
            self.send_frame(error_frame("bad_json", "each line must be one JSON object"))
            return
        d = self._inflight = self.factory.dispatcher.dispatch(self.session, msg)
        d.addBoth(self._answered)
        if self._inflight is not None:  # waiting on storage: read no further meanwhile
            self._pause("request")

    def _refuse(self, msg: Any, wait: float) -> None:
        """Too many requests: say so and when to retry; the request is not run."""
        extra: dict[str, Any] = {"retry_after": round(wait + 0.005, 2)}
        if isinstance(msg, dict) and "req" in msg and not isinstance(msg["req"], dict | list):
            extra["req"] = msg["req"]
        self.send_frame(error_frame("rate_limited", "too many requests; slow down", **extra))

    def _answered(self, result: dict[str, Any] | Failure | None) -> None:
        """One callback for the whole request: reply, then read the next line."""
        self._inflight = None
        if isinstance(result, Failure):
            self.log.failure("reply to {peer} failed", result, peer=self.peer)
        elif result is not None:
            try:
                self.send_frame(result)
            except Exception:
                self.log.failure("reply to {peer} failed", peer=self.peer)
        if "request" in self._pauses:
            self._unpause("request")

    def lineLengthExceeded(self, line: bytes) -> None:
        self.send_frame(error_frame(
            "line_too_long", f"a line is at most {self.MAX_LENGTH} bytes; closing"))
        self.close()

    def timeoutConnection(self) -> None:
        self.send_frame(error_frame("idle_timeout", "no data for too long; closing"))
        self.log.info("idle timeout for {peer}", peer=self.peer)
        self.close()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost = True
        if not self._counted:
            return  # refused at the door: it never had a session
        self.factory.release(self.address)
        self.setTimeout(None)
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self.session.closed = True
        self.factory.live.discard(self)
        self.log.info("connection closed from {peer}", peer=self.peer)
        self.factory.dispatcher.connection_lost(self.session)
        waiting, self._writable = self._writable, []
        for d in waiting:
            d.callback(None)  # the waiter sees session.closed and gives up
        closed, self._on_close = self._on_close, []
        for d in closed:
            d.callback(None)


class ChatFactory(protocol.Factory):
    noisy = False

    def __init__(self, dispatcher: Dispatcher, clock: IReactorTime,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 max_line: int = DEFAULT_MAX_LINE,
                 max_send_buffer: int = DEFAULT_SEND_BUFFER,
                 rate_limit: float = DEFAULT_RATE_LIMIT,
                 rate_burst: int = DEFAULT_RATE_BURST,
                 max_per_address: int = DEFAULT_MAX_PER_ADDRESS,
                 metrics: Registry | None = None) -> None:
        self.dispatcher = dispatcher
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_line = max_line
        self.max_send_buffer = max_send_buffer
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        self.max_per_address = max_per_address
        self.live: set[ChatProtocol] = set()
        self._per_address: dict[str, int] = {}
        m = metrics if metrics is not None else Registry()
        m.gauge("qqchat_connections_open", "Client connections open now.",
                lambda: len(self.live))
        self.accepted = m.counter("qqchat_connections_accepted_total",
                                  "Client connections accepted (refused ones included).")
        self.errors = m.counter("qqchat_errors_sent_total", "Error frames sent, by code.",
                                ["code"])
        pushes = m.counter("qqchat_message_pushes_total",
                           "Message pushes written to clients (live and backlog), by kind.",
                           ["kind"])
        self._pushed = (pushes.labels("direct"), pushes.labels("group"),
                        pushes.labels("broadcast"))

    def count_push(self, line: bytes) -> None:
        """Count one ``message`` push by kind, read off its keys: a key cannot occur
        inside a JSON string, where every quote is escaped."""
        if b'"to":' in line:
            self._pushed[0].inc()
        elif b'"group":' in line:
            self._pushed[1].inc()
        else:
            self._pushed[2].inc()

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``, unless it already has its share."""
        count = self._per_address.get(address, 0)
        if self.max_per_address and count >= self.max_per_address:
            return False
        self._per_address[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self._per_address.pop(address, 1) - 1
        if count > 0:
            self._per_address[address] = count

    def buildProtocol(self, addr: IAddress) -> ChatProtocol:
        self.accepted.inc()
        return ChatProtocol(self)
