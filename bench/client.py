"""The generator's side of the wire protocol: one lean connection class.

Replies are matched to requests by ``req`` and handed to a plain callback (no
Deferred on the hot path, so the generator costs little per message); pushes
go to ``on_message`` or are classified. Nothing is dropped silently: every
frame the workload did not expect is counted in ``Errors`` under a kind that
says what it was.
"""

from __future__ import annotations

import base64
import collections
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
from twisted.internet import defer, endpoints, protocol, tcp
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

Frame = dict[str, Any]
ReplyCallback = Callable[[Frame], None]

#: pushes a workload may ignore: nothing in the benchmarks depends on them
HARMLESS_PUSHES = frozenset({"presence", "group_joined", "group_left", "friend_request",
                             "friend_added", "friend_declined", "friend_removed"})


class Errors:
    """Counts of everything that went wrong, by kind, with a few examples."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: list[str] = []
        #: set while the generator tears a run down: what breaks then is its doing
        self.muted = False

    def add(self, kind: str, detail: Any = None, n: int = 1) -> None:
        if self.muted:
            return
        self.counts[kind] += n
        if len(self.examples) < 10:
            self.examples.append(kind if detail is None else f"{kind}: {detail}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class RequestError(Exception):
    """A request got an error frame, timed out, or lost its connection."""

    def __init__(self, kind: str, detail: Any = None) -> None:
        super().__init__(kind if detail is None else f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def error_kind(reply: Frame) -> str:
    return f"reply_error:{reply.get('code')}"


class Conn(LineReceiver):
    """One client connection."""

    delimiter = b"\n"
    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self, errors: Errors) -> None:
        self.errors = errors
        self._next_req = 0
        self._pending: dict[int, ReplyCallback] = {}
        #: live and backlog ``message`` pushes
        self.on_message: Callable[[Frame], None] | None = None
        #: the ``synced`` push after a login's backlog
        self.on_synced: Callable[[Frame], None] | None = None
        self.user_id: int | None = None
        self.name = ""
        self.closing = False
        self.connected_ok = False
        self.lost: defer.Deferred[None] = defer.Deferred()

    # -- sending ----------------------------------------------------------

    def call(self, frame: Frame, callback: ReplyCallback) -> None:
        """Send a request; ``callback`` gets its reply or error frame (or a synthetic
        ``connection_lost`` error frame if the connection goes first)."""
        self._next_req += 1
        req = self._next_req
        frame["req"] = req
        self._pending[req] = callback
        self.write_line(orjson.dumps(frame, option=orjson.OPT_APPEND_NEWLINE))

    def write_line(self, line: bytes) -> None:
        """Hand ``line`` to the kernel at once when nothing is queued: through
        ``transport.write`` every request would cost two ``epoll_ctl`` calls and a
        reactor pass (write interest on, then off), generator time that would show
        as latency. What the kernel does not take goes through the transport."""
        t = self.transport
        if (isinstance(t, tcp.Connection) and not t._tempDataBuffer and not t.dataBuffer
                and not t.disconnecting):
            try:
                sent = t.socket.send(line)
            except OSError:
                sent = 0  # the transport's own write finds the error and reports it
            if sent == len(line):
                return
            line = line[sent:]
        t.write(line)

    def request(self, frame: Frame, clock: IReactorTime, timeout: float
                ) -> defer.Deferred[Frame]:
        """Send a request; the Deferred fires with the success reply, or fails with
        RequestError (error frame, timeout, lost connection)."""
        d: defer.Deferred[Frame] = defer.Deferred()
        typ = frame.get("type")

        def done(reply: Frame) -> None:
            if d.called:
                return
            if reply.get("type") == "error":
                d.errback(RequestError(error_kind(reply), f"{typ}: {reply.get('message')}"))
            else:
                d.callback(reply)

        self.call(frame, done)

        def timed_out(f: Failure) -> Failure:
            if f.check(defer.TimeoutError, defer.CancelledError):
                raise RequestError("timeout", f"no reply to {typ} in {timeout:.0f} s")
            return f

        d.addTimeout(timeout, clock)
        d.addErrback(timed_out)
        return d

    def pending(self) -> int:
        return len(self._pending)

    def abort(self) -> None:
        """Drop the connection at once (end of run): not an error."""
        self.closing = True
        if self.transport is not None:
            self.transport.abortConnection()

    # -- receiving --------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected_ok = True
        # one small request at a time: Nagle would hold it for the peer's delayed ACK
        self.transport.setTcpNoDelay(True)

    def lineReceived(self, line: bytes) -> None:
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.errors.add("bad_json_from_server", line[:80])
            return
        if not isinstance(msg, dict):
            self.errors.add("non_object_from_server", line[:80])
            return
        req = msg.get("req")
        if req is not None:
            callback = self._pending.pop(req, None)
            if callback is None:
                self.errors.add("unexpected_reply", line[:80])
            else:
                callback(msg)
            return
        typ = msg.get("type")
        if typ == "message":
            if self.on_message is None:
                self.errors.add("unexpected_message", line[:120])
            else:
                self.on_message(msg)
        elif typ == "synced":
            if self.on_synced is None:
                self.errors.add("unexpected_synced")
            else:
                self.on_synced(msg)
        elif typ in HARMLESS_PUSHES:
            pass
        elif typ == "error":
            self.errors.add(f"push_error:{msg.get('code')}", msg.get("message"))
        else:
            self.errors.add(f"push:{typ}", line[:80])

    def lineLengthExceeded(self, line: bytes) -> None:
        self.errors.add("line_too_long_from_server")
        self.abort()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not self.closing:
            self.errors.add("connection_lost", f"user {self.name}: {reason.getErrorMessage()}")
        pending, self._pending = self._pending, {}
        for callback in pending.values():
            callback({"type": "error", "code": "connection_lost",
                      "message": "connection closed before the reply"})
        if not self.lost.called:
            self.lost.callback(None)


class WSConn(Conn):
    """The same client over a WebSocket (``/ws`` on the daemon's web port): each
    request leaves as one masked text frame, each frame received is one line.

    A lean framer of the generator's own, so what is measured is the daemon's edge:
    no fragmentation, no extensions, one random masking key per connection.
    ``ready`` fires once the server has accepted the upgrade.
    """

    def __init__(self, errors: Errors, host: str, port: int) -> None:
        super().__init__(errors)
        self.host_header = f"{host}:{port}"
        self.ready: defer.Deferred[WSConn] = defer.Deferred()
        self._upgraded = False
        self._in = b""
        self._key = os.urandom(4)
        self._masks: dict[int, int] = {}  # payload length -> the key repeated, as an int

    def connectionMade(self) -> None:
        super().connectionMade()
        nonce = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            f"GET /ws HTTP/1.1\r\nHost: {self.host_header}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {nonce}\r\n\r\n".encode())

    def write_line(self, line: bytes) -> None:
        payload = line[:-1]  # one JSON object per frame, no newline
        n = len(payload)
        if n < 126:
            head = bytes((0x81, 0x80 | n))
        elif n < 0x10000:
            head = b"\x81\xfe" + n.to_bytes(2, "big")
        else:
            head = b"\x81\xff" + n.to_bytes(8, "big")
        mask = self._masks.get(n)
        if mask is None:
            mask = self._masks[n] = int.from_bytes((self._key * (n // 4 + 1))[:n], "big")
        masked = (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")
        super().write_line(head + self._key + masked)

    def dataReceived(self, data: bytes) -> None:
        buf = self._in + data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._in = buf
                return
            status = buf[:buf.find(b"\r\n")]
            if b" 101 " not in status + b" ":
                self.errors.add("upgrade_refused", status[:80])
                self.ready.errback(RequestError("upgrade_refused", status.decode("latin-1")))
                self.abort()
                return
            self._upgraded = True
            buf = buf[end + 4:]
            self.ready.callback(self)
        pos, size = 0, len(buf)
        while size - pos >= 2:
            op, n = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
            start = pos + 2
            if n == 126:
                if size - pos < 4:
                    break
                n, start = int.from_bytes(buf[pos + 2:pos + 4], "big"), pos + 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, start = int.from_bytes(buf[pos + 2:pos + 10], "big"), pos + 10
            if size - start < n:
                break
            payload = buf[start:start + n]
            pos = start + n
            if op == 1:
                self.lineReceived(payload)
            elif op == 8:
                self.transport.loseConnection()  # the server's goodbye
            elif op != 10:
                self.errors.add("unexpected_frame", op)
        self._in = buf[pos:]


# -- setting up many connections ----------------------------------------------------


async def bounded(items: Iterable[Any], fn: Callable[[Any], defer.Deferred[Any]],
                  limit: int) -> list[tuple[bool, Any]]:
    """Run ``fn`` over ``items`` with at most ``limit`` in flight; (ok, value) each."""
    sem = defer.DeferredSemaphore(limit)
    ds = [sem.run(fn, item) for item in items]
    return list(await defer.DeferredList(ds, consumeErrors=True))


def connect_one(reactor: IReactorTCP, host: str, port: int, errors: Errors,
                timeout: float, ws: bool = False) -> defer.Deferred[Conn]:
    """A connection to the TCP port, or with ``ws`` a WebSocket on the web port
    (fires once the upgrade is through)."""
    endpoint = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=int(timeout))
    if not ws:
        return endpoints.connectProtocol(endpoint, Conn(errors))
    conn = WSConn(errors, host, port)
    d = endpoints.connectProtocol(endpoint, conn)
    d.addCallback(lambda _: conn.ready)
    d.addTimeout(timeout, reactor)
    return d


async def connect_many(reactor: Any, host: str, port: int, n: int, errors: Errors,
                       timeout: float, concurrency: int = 100,
                       stop_after_failures: int | None = None, ws: bool = False
                       ) -> list[Conn]:
    """Open ``n`` connections, ``concurrency`` at a time (the daemon's accept queue
    is short; a flood would measure SYN retries). Failures are counted; with
    ``stop_after_failures`` the rest are not attempted once that many failed."""
    conns: list[Conn] = []
    failures = 0

    def one(_: int) -> defer.Deferred[None]:
        if stop_after_failures is not None and failures >= stop_after_failures:
            return defer.succeed(None)
        d = connect_one(reactor, host, port, errors, timeout, ws)

        def ok(conn: Conn) -> None:
            conns.append(conn)

        def failed(f: Failure) -> None:
            nonlocal failures
            failures += 1
            errors.add("connect_failed", f.getErrorMessage())

        d.addCallbacks(ok, failed)
        return d

    await bounded(range(n), one, concurrency)
    return conns


def user_name(prefix: str, i: int) -> str:
    return f"{prefix}{i}"


PASSWORD = "bench-password"


async def register_users(conns: Sequence[Conn], names: Sequence[str], clock: IReactorTime,
                         errors: Errors, timeout: float, window: int = 8) -> dict[str, int]:
    """Register ``names`` spread over ``conns``, a few requests in flight per
    connection; returns name -> user id of those that succeeded."""
    ids: dict[str, int] = {}
    shares = [list(names[i::len(conns)]) for i in range(len(conns))]

    async def one_conn(k: int) -> None:
        conn, share = conns[k], shares[k]

        def reg(name: str) -> defer.Deferred[None]:
            d = conn.request({"type": "register", "name": name, "password": PASSWORD},
                             clock, timeout)

            def ok(reply: Frame) -> None:
                if reply.get("name") != name or not isinstance(reply.get("id"), int):
                    errors.add("bad_register_reply", reply)
                else:
                    ids[name] = reply["id"]

            def failed(f: Failure) -> None:
                e = f.value
                errors.add(e.kind if isinstance(e, RequestError) else "register_failed",
                           f.getErrorMessage())

            d.addCallbacks(ok, failed)
            return d

        await bounded(share, reg, window)

    await defer.DeferredList([defer.Deferred.fromCoroutine(one_conn(k))
                              for k in range(len(conns))], consumeErrors=True)
    return ids


def login(conn: Conn, name: str, clock: IReactorTime, timeout: float,
          on_backlog: Callable[[Frame], None] | None = None
          ) -> defer.Deferred[tuple[Frame, Frame]]:
    """Log in and wait for ``synced``; fires with (login reply, synced push).
    Backlog messages go to ``on_backlog`` (none are expected without one)."""
    d: defer.Deferred[tuple[Frame, Frame]] = defer.Deferred()
    state: dict[str, Frame] = {}

    def on_synced(msg: Frame) -> None:
        conn.on_synced = None
        if "reply" not in state:
            conn.errors.add("synced_before_login_reply")
        if not d.called:
            d.callback((state.get("reply", {}), msg))

    def replied(reply: Frame) -> None:
        if d.called:
            return
        if reply.get("type") == "error":
            conn.on_synced = None
            d.errback(RequestError(error_kind(reply), f"login {name}: {reply.get('message')}"))
            return
        user = reply.get("user") or {}
        if user.get("name") != name or not isinstance(user.get("id"), int):
            conn.errors.add("bad_login_reply", reply)
        conn.user_id, conn.name = user.get("id"), name
        state["reply"] = reply

    conn.on_synced = on_synced
    conn.on_message = on_backlog
    conn.call({"type": "login", "name": name, "password": PASSWORD}, replied)

    def timed_out(f: Failure) -> Failure:
        if f.check(defer.TimeoutError, defer.CancelledError):
            raise RequestError("timeout", f"login {name}: no synced in {timeout:.0f} s")
        return f

    d.addTimeout(timeout, clock)
    d.addErrback(timed_out)
    return d


async def login_many(conns: Sequence[Conn], names: Sequence[str], clock: IReactorTime,
                     errors: Errors, timeout: float, concurrency: int = 100) -> list[Conn]:
    """Log ``conns[i]`` in as ``names[i]``; returns those logged in."""
    ok: list[Conn] = []

    def one(i: int) -> defer.Deferred[None]:
        d = login(conns[i], names[i], clock, timeout)

        def done(_: object) -> None:
            ok.append(conns[i])

        def failed(f: Failure) -> None:
            e = f.value
            errors.add(e.kind if isinstance(e, RequestError) else "login_failed",
                       f.getErrorMessage())

        d.addCallbacks(done, failed)
        return d

    await bounded(range(len(conns)), one, concurrency)
    return ok


def abort_all(conns: Iterable[Conn]) -> None:
    for conn in conns:
        conn.abort()
