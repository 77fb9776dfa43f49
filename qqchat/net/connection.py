"""What a client connection is, whatever edge it came in by.

A connection holds a session, the per-connection rate bucket, the idle timeout,
flow control (requests in order, a cap on what waits for a slow reader), the
write path, closing with a grace period, and its place in the per-address
count. How requests and replies are framed on the wire is the edge's business:
``protocol.py`` (JSON lines over TCP) and ``web.py`` (WebSocket text frames)
each add only that. Both edges share one ``ConnectionFactory``: one live set
for graceful stop, one per-address table, one set of metrics labelled by edge.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet import defer, protocol, tcp
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from qqchat.codec import DecodeError, decode, encode
from qqchat.dispatch import Dispatcher
from qqchat.frames import Reply, error_frame
from qqchat.lazylist import LazyList, appended
from qqchat.metrics import Count, Registry
from qqchat.ratelimit import TokenBucket
from qqchat.session import Session

DEFAULT_MAX_LINE = 64 * 1024
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_SEND_BUFFER = 4 * 1024 * 1024
#: bytes waiting for slow clients, over all connections, before the slowest is cut off
DEFAULT_MAX_PENDING = 256 * 1024 * 1024
#: requests a second per connection, and how many may come at once: far above what a
#: person types, low enough that one connection cannot monopolise a core
DEFAULT_RATE_LIMIT = 200.0
DEFAULT_RATE_BURST = 400
_UNDECODABLE = object()
#: connections one client address may hold at once, over every edge (0: no cap)
DEFAULT_MAX_PER_ADDRESS = 200
#: how long a closing connection may take to flush before it is cut
CLOSE_GRACE = 5.0
#: the edges connections come in by, as metrics label them
EDGES = ("tcp", "web")


@implementer(IPushProducer)
class _WriteWatch:
    """Registered on the transport to learn when the client stops reading.

    The transport pauses its producer once its send buffer passes its high-water
    mark; the connection then stops reading requests and counts what it still
    has to write. A separate object, because the connection's own pause/resume
    is busy keeping requests in order.
    """

    def __init__(self, conn: ChatConnection) -> None:
        self.conn = conn

    def pauseProducing(self) -> None:
        self.conn._write_blocked()

    def resumeProducing(self) -> None:
        self.conn._write_unblocked()

    def stopProducing(self) -> None:
        pass


class ChatConnection(TimeoutMixin):
    """One client connection, minus its framing.

    Requests are handled one at a time, in order: while one waits on storage the
    connection reads no further request (and once unread input passes one
    request's worth, pauses the socket), which keeps replies in request order
    and bounds what a pipelining client can make us buffer. A client that stops
    reading is cut off once ``max_send_buffer`` bytes wait for it; what was
    meant for it stays in the message log for its next login.

    An edge subclass receives bytes, cuts them into requests and calls
    ``lineReceived`` with each (``lineLengthExceeded`` for one over the limit),
    and replays what it held back in ``_resume_reading``. ``frame_line`` turns
    an encoded line into what goes on the wire (None: the line as it is).
    """

    log = Logger()
    #: metrics label of the edge
    edge: ClassVar[str] = "tcp"
    #: wraps one newline-terminated JSON line for the wire; None writes it as is
    frame_line: ClassVar[Callable[[bytes], bytes] | None] = None
    #: written just before the connection is closed by the server
    goodbye: ClassVar[bytes] = b""
    #: what one request is called in error messages
    unit: ClassVar[str] = "line"
    #: a graceful stop waiting for the request in hand (``stop_reading``); set on
    #: the instance only then
    _stopped: defer.Deferred[None] | None = None

    def __init__(self, factory: ConnectionFactory) -> None:
        self.factory = factory
        self.MAX_LENGTH = factory.max_line
        self.callLater = factory.clock.callLater  # TimeoutMixin schedules through this
        self.session = Session(self)
        self.peer = "?"
        self.address = "?"
        self._counted = False
        # The three below start as the shared empty tuple (and the waiter lists become
        # lists only when used, ``lazylist``): an idle connection holds none of its
        # own. As a set and two lists they were some 330 bytes a connection.
        self._on_close: LazyList[defer.Deferred[None]] = ()
        #: why no further request is read now ("request", "write", "stop")
        self._pauses: tuple[str, ...] = ()
        #: the request in hand, while its reply is not written yet
        self._inflight: defer.Deferred[Any] | Reply | None = None
        self._blocked_bytes: int | None = None  # None while the client keeps up
        #: pushes the session holds for this connection during its login backlog
        self._held_bytes = 0
        #: what of the above counts in the factory's ``pending_bytes``
        self._pending = 0
        #: set once the server closes this connection: nothing more is queued for it
        self._closing = False
        self._writable: LazyList[defer.Deferred[None]] = ()
        self._abort_call: IDelayedCall | None = None
        self._lost = False
        self._socket_paused = False
        #: the plain TCP transport, when lines may be sent on its socket directly
        self._tcp: tcp.Connection | None = None
        self.stopping = False
        self._bucket = TokenBucket(factory.rate_limit, factory.rate_burst,
                                   factory.clock.seconds())
        self._requests: Count = factory.requests_by_edge.labels(self.edge)
        #: set while no further request may be read (LineReceiver reads it too). Set
        #: here, not first at a pause, so that every connection's attributes come into
        #: being in one order and all their dicts share the class's keys: one set
        #: later made the order the daemon's first connection met the shared one, and
        #: every connection that met another a dict of its own (1.4 KiB an idle client)
        self.paused = False

    # -- Connection, as the session sees it -------------------------------

    def send_line(self, line: bytes) -> None:
        if self.session.closed or self._closing:
            return  # closing: the log keeps what it was owed, for its next login
        if self._blocked_bytes is not None:
            self._blocked_bytes += len(line)
            if not self._pend(len(line)):
                return
        factory = self.factory
        if line is factory.last_push:
            # the line counted last: a fan-out writes one line object to every
            # recipient, and its kind is found once
            factory.last_push_counter.value += 1
        elif line.startswith(b'{"type":"message",'):
            # counted as written; the kind's key is the frame's last (``message_frame``)
            counter = factory.pushed.get(line[line.rfind(b',"', -40) + 2])
            if counter is not None:
                counter.value += 1
                factory.last_push, factory.last_push_counter = line, counter
        if self.frame_line is not None:
            line = self.frame_line(line)
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
        self._closing = True
        # with a producer registered the transport would wait for it forever
        self.transport.unregisterProducer()
        self._hang_up()
        if self._socket_paused:
            # a TLS transport closes only once it reads the client's close_notify
            self._socket_paused = False
            self.transport.resumeProducing()
        if self._abort_call is None and not self.session.closed:
            self._abort_call = self.callLater(CLOSE_GRACE, self._abort)

    def _hang_up(self) -> None:
        if self.goodbye and not self.transport.disconnecting:
            self.transport.write(self.goodbye)
        self.transport.loseConnection()

    def _abort(self) -> None:
        self._abort_call = None
        if not self.session.closed:
            self.transport.abortConnection()

    def hold(self, nbytes: int) -> bool:
        """The session holds ``nbytes`` more for this connection (pushes during its
        login backlog): counted against the same cap as unsent output. False when
        that passes the cap and the connection is being cut off."""
        self._held_bytes += nbytes
        return self._pend(nbytes)

    def unhold(self, nbytes: int) -> None:
        self._held_bytes -= nbytes
        self._account(-nbytes)

    def _pend(self, nbytes: int) -> bool:
        """Count ``nbytes`` more waiting for this client; cut it off past its cap."""
        self._account(nbytes)
        if (self._blocked_bytes or 0) + self._held_bytes > self.factory.max_send_buffer:
            self.cut_off("is not reading")
            return False
        return not self.session.closed

    def _account(self, nbytes: int) -> None:
        if nbytes < 0:
            nbytes = max(nbytes, -self._pending)  # what was released once stays released
        if nbytes:
            self._pending += nbytes
            self.factory.pending_changed(self, nbytes)

    def cut_off(self, why: str) -> None:
        """Drop a client that does not read; its messages stay in the log."""
        if self.session.closed:
            return
        self.log.info("{peer} {why}; disconnecting", peer=self.peer, why=why)
        self.session.closed = True
        self._account(-self._pending)
        self.transport.abortConnection()

    def writable(self) -> defer.Deferred[None]:
        if self._blocked_bytes is None or self.session.closed:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._writable = appended(self._writable, d)
        return d

    def notifyOnClose(self, d: defer.Deferred[None]) -> None:
        """Fire ``d`` once the connection is gone (for graceful stop)."""
        if self._lost:
            d.callback(None)
        else:
            self._on_close = appended(self._on_close, d)

    # -- flow control -----------------------------------------------------

    # Waiting on a request only stops the request loop (``self.paused``); the socket
    # itself is paused only when a reason needs it (the client does not read, the
    # server is stopping) or unread input piles up. Pausing the socket for every
    # request would cost two epoll_ctl calls a message.

    def _pause(self, reason: str) -> None:
        pauses = self._pauses
        if not pauses:
            self._pauses = (reason,)
        elif reason not in pauses:
            self._pauses = (*pauses, reason)
        self.paused = True
        if reason != "request":
            self._pause_socket()

    def _unpause(self, reason: str) -> None:
        pauses = self._pauses
        if reason in pauses:
            self._pauses = pauses = (
                () if len(pauses) == 1 else tuple(r for r in pauses if r != reason))
        if pauses or self.session.closed or self.transport.disconnecting:
            return
        self.paused = False
        if self._socket_paused:
            self._socket_paused = False
            self.transport.resumeProducing()
        self._resume_reading()

    def _resume_reading(self) -> None:
        """Serve the requests that arrived while reading was paused."""
        raise NotImplementedError

    def _pause_socket(self) -> None:
        if not self._socket_paused:
            self._socket_paused = True
            self.transport.pauseProducing()

    def _write_blocked(self) -> None:
        # the transport calls this on every write past its high-water mark
        if self._blocked_bytes is None:
            self._blocked_bytes = 0
            self._pause("write")

    def _write_unblocked(self) -> None:
        if self._blocked_bytes:
            self._account(-self._blocked_bytes)
        self._blocked_bytes = None
        waiting, self._writable = self._writable, ()
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
        elif self._stopped is None:
            self._stopped = done  # fired by _answered, once the reply is written
        else:
            self._stopped.addBoth(lambda r: (done.callback(None), r)[1])
        return done

    # -- the connection's life ----------------------------------------------

    def connectionMade(self) -> None:
        addr: IAddress = self.transport.getPeer()
        self.address = str(getattr(addr, "host", "?"))
        self.peer = f"{self.address}:{getattr(addr, 'port', '?')}"
        if not self.factory.admit(self.address):
            self.log.info("refused {peer}: too many connections from its address",
                          peer=self.peer)
            self.send_frame(error_frame(
                "too_many_connections", "too many connections from your address; closing"))
            self.session.closed = True
            self._hang_up()
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
        self.log.info("connection open from {peer} ({edge})", peer=self.peer, edge=self.edge)

    def lineReceived(self, line: bytes) -> None:
        """One request as the edge framed it: rate limit, decode, dispatch."""
        self.resetTimeout()
        if line.endswith(b"\r"):
            line = line[:-1]  # telnet sends CRLF
        if not line or line.isspace():
            return  # blank lines are ignored, so a stray Enter in telnet is harmless
        self._requests.value += 1
        try:
            msg = decode(line)
        except DecodeError:
            msg = _UNDECODABLE  # not None: the line `null` is JSON, just not an object
        wait = self._bucket.take(self.factory.clock.seconds())
        if wait:
            self._refuse(msg, wait)
            return
        if msg is _UNDECODABLE:
            self.send_frame(error_frame("bad_json", f"each {self.unit} must be one JSON object"))
            return
        result = self.factory.dispatcher.dispatch(self.session, msg)
        if result is None:
            return
        if isinstance(result, dict):
            self.send_frame(result)
            return
        self._inflight = result
        if isinstance(result, defer.Deferred):
            result.addBoth(self._answered)
        else:
            result.then(self._answered)
        if self._inflight is not None:  # waiting on storage: read no further meanwhile
            self._pause("request")

    def _refuse(self, msg: Any, wait: float) -> None:
        """Too many requests: say so and when to retry; the request is not run."""
        extra: dict[str, Any] = {"retry_after": round(wait + 0.005, 2)}
        if isinstance(msg, dict) and "req" in msg and not isinstance(msg["req"], dict | list):
            extra["req"] = msg["req"]
        self.send_frame(error_frame("rate_limited", "too many requests; slow down", **extra))

    def _answered(self, result: dict[str, Any] | Failure | None) -> None:
        """One callback for the whole request: reply, then read the next one."""
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
        if self._stopped is not None:
            stopped, self._stopped = self._stopped, None
            stopped.callback(None)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.send_frame(error_frame(
            "line_too_long", f"a {self.unit} is at most {self.MAX_LENGTH} bytes; closing"))
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
        if self._pending:
            self._account(-self._pending)
        self.log.info("connection closed from {peer}", peer=self.peer)
        self.factory.dispatcher.connection_lost(self.session)
        waiting, self._writable = self._writable, ()
        for d in waiting:
            d.callback(None)  # the waiter sees session.closed and gives up
        closed, self._on_close = self._on_close, ()
        for d in closed:
            d.callback(None)


class ConnectionFactory(protocol.Factory):
    """What every client connection shares, over every edge: the dispatcher, the
    limits, the per-address count, the live set (for graceful stop) and metrics.

    As a protocol factory it builds ``protocol`` for byte-stream edges; other
    edges (the WebSocket resource) build their connections with ``connection``.
    """

    noisy = False
    protocol: type[ChatConnection] = ChatConnection  # type: ignore[assignment]

    def __init__(self, dispatcher: Dispatcher, clock: IReactorTime,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 max_line: int = DEFAULT_MAX_LINE,
                 max_send_buffer: int = DEFAULT_SEND_BUFFER,
                 rate_limit: float = DEFAULT_RATE_LIMIT,
                 rate_burst: int = DEFAULT_RATE_BURST,
                 max_per_address: int = DEFAULT_MAX_PER_ADDRESS,
                 metrics: Registry | None = None,
                 max_pending_bytes: int = DEFAULT_MAX_PENDING) -> None:
        self.dispatcher = dispatcher
        #: daemon-wide cap on bytes waiting for slow clients (0: none); past it the
        #: connection with the most waiting is cut off, then the next (R8)
        self.max_pending_bytes = max_pending_bytes
        self.pending_bytes = 0
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_line = max_line
        self.max_send_buffer = max_send_buffer
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        self.max_per_address = max_per_address
        self.live: set[ChatConnection] = set()
        self._per_address: dict[str, int] = {}
        m = metrics if metrics is not None else Registry()
        m.gauge("qqchat_connections_open", "Client connections open now, by edge.",
                self._open_by_edge, ["edge"])
        self.accepted = m.counter("qqchat_connections_accepted_total",
                                  "Client connections accepted (refused ones included), "
                                  "by edge.", ["edge"])
        self.requests_by_edge = m.counter(
            "qqchat_edge_requests_total",
            "Requests read from clients (bad or rate-limited ones included), by edge.",
            ["edge"])
        for edge in EDGES:  # every edge shows, at 0 until used
            self.accepted.labels(edge)
            self.requests_by_edge.labels(edge)
        self.errors = m.counter("qqchat_errors_sent_total", "Error frames sent, by code.",
                                ["code"])
        pushes = m.counter("qqchat_message_pushes_total",
                           "Message pushes written to clients (live and backlog), by kind.",
                           ["kind"])
        #: ``message`` pushes by the first letter of the kind's key, the frame's last:
        #: ``,"to":``, ``,"group":``, ``,"broadcast":`` (a key's ``,"`` cannot occur
        #: inside a JSON string, where every quote is escaped)
        self.pushed: dict[int, Count] = {ord("t"): pushes.labels("direct"),
                                         ord("g"): pushes.labels("group"),
                                         ord("b"): pushes.labels("broadcast")}
        #: the last push counted, and its counter (``ChatConnection.send_line``)
        self.last_push: bytes | None = None
        self.last_push_counter: Count = self.pushed[ord("t")]

    def pending_changed(self, conn: ChatConnection, nbytes: int) -> None:
        self.pending_bytes += nbytes
        if nbytes > 0 and self.max_pending_bytes and self.pending_bytes > self.max_pending_bytes:
            self._shed()

    def _shed(self) -> None:
        """Cut off the slowest readers (most bytes waiting) until under the cap."""
        while self.pending_bytes > self.max_pending_bytes:
            slowest = max(self.live, key=lambda c: c._pending, default=None)
            if slowest is None or slowest._pending <= 0:
                return
            slowest.cut_off("has the most output waiting of all clients "
                            "(--max-pending-bytes)")

    def _open_by_edge(self) -> dict[tuple[str, ...], float]:
        open_now = Tally(c.edge for c in self.live)
        return {(edge,): open_now.get(edge, 0) for edge in EDGES}

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

    def connection(self, kind: type[ChatConnection]) -> ChatConnection:
        """A new connection of an edge's ``kind``, counted as accepted on its edge."""
        self.accepted.labels(kind.edge).inc()
        return kind(self)

    def buildProtocol(self, addr: IAddress) -> ChatConnection:
        return self.connection(self.protocol)
