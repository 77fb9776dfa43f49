"""Per-connection state that services act on, independent of the socket code."""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import defer

from qqchat.codec import encode
from qqchat.lazylist import LazyList, appended


class Connection(Protocol):
    """What a session needs from the network layer."""

    peer: str
    #: the client's host, without the port: what per-address limits count
    address: str

    def send_line(self, line: bytes) -> None: ...

    def close(self) -> None: ...

    def writable(self) -> defer.Deferred[None]:
        """Fires once the client has read enough that more may be written."""
        ...

    def hold(self, nbytes: int) -> bool:
        """Count ``nbytes`` the session holds for the client against its cap; False
        when that cuts the client off."""
        ...

    def unhold(self, nbytes: int) -> None:
        """The held bytes were sent, or dropped."""
        ...


class Session:
    """One client connection and, once logged in, its user.

    From login until the backlog has been sent, live pushes are held, then sent
    after it: messages the backlog already carried are dropped, so the client
    sees every message once, and nothing lands before the login reply.
    """

    __slots__ = ("_held", "_held_bytes", "acked", "admin", "closed", "conn", "login",
                 "max_sent", "name", "remembered", "seen", "syncing", "token", "user_id")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.user_id: int | None = None
        self.name: str | None = None
        #: the account may broadcast (read at login)
        self.admin = False
        #: highest message id written to this connection; acks may not pass it
        self.max_sent = 0
        #: highest message id known to be acknowledged durably
        self.acked = 0
        self.syncing = False
        #: set by the network layer when the connection is gone
        self.closed = False
        #: pushes held during the login backlog; the shared empty tuple while none are
        #: (an idle client's session holds no list of its own)
        self._held: LazyList[tuple[int | None, bytes]] = ()
        self._held_bytes = 0
        #: identifies this login cluster-wide (set by the relay when it claims the user)
        self.token = ""
        #: hash of the session token this login used or was given (K3), revoked at logout
        self.remembered: str | None = None
        #: in cluster mode, ids delivered above ``acked``: pushes from several nodes can
        #: arrive out of order or twice, so acks are checked against this set
        self.seen: set[int] | None = None
        #: names this login in the database (``LogStore.backlog_start``): once the user
        #: logs in again, this session's checked acks are refused
        self.login: int | None = None

    @property
    def peer(self) -> str:
        return self.conn.peer

    @property
    def address(self) -> str:
        return self.conn.address

    def send(self, frame: dict[str, Any]) -> None:
        self.conn.send_line(encode(frame))

    def send_line(self, line: bytes) -> None:
        self.conn.send_line(line)

    def deliver(self, msg_id: int, line: bytes) -> None:
        """Push one stored message (pre-encoded ``line``) to this client."""
        if self.syncing:
            self._hold(msg_id, line)
            return
        if self.seen is not None:
            if msg_id in self.seen or msg_id <= self.acked:
                return
            self.seen.add(msg_id)
        self.conn.send_line(line)
        if msg_id > self.max_sent:
            self.max_sent = msg_id

    def acknowledged(self, msg_id: int) -> None:
        if msg_id > self.acked:
            self.acked = msg_id
            if self.seen:
                self.seen = {i for i in self.seen if i > msg_id}

    def notify(self, line: bytes) -> None:
        """Push an event that is not a stored message (presence, friend request...)."""
        if self.syncing:
            self._hold(None, line)
        else:
            self.conn.send_line(line)

    def _hold(self, msg_id: int | None, line: bytes) -> None:
        """Keep a push for after the backlog, within the connection's cap: a client
        that stops reading in its backlog is cut off, not buffered for (R8). What it
        loses that way is in the log for its next login."""
        if self.conn.hold(len(line)):
            self._held = appended(self._held, (msg_id, line))
            self._held_bytes += len(line)

    def begin_sync(self) -> None:
        self.syncing = True
        self._drop_held()

    def _drop_held(self) -> None:
        self._held = ()
        if self._held_bytes:
            self.conn.unhold(self._held_bytes)
            self._held_bytes = 0

    def end_sync(self) -> None:
        """Send what arrived during the backlog, in arrival order, minus what the
        backlog carried (every message committed before it was read is in it)."""
        held = self._held
        self._drop_held()
        self.syncing = False
        backlog_end = self.max_sent
        for msg_id, line in held:
            if msg_id is None:
                self.conn.send_line(line)
            elif msg_id > backlog_end:
                self.deliver(msg_id, line)

    def kick(self, reason: str, code: str = "replaced") -> None:
        """End this session: the same user logged in elsewhere (``replaced``), or an
        operator disabled the account (``account_disabled``). ``code`` is for
        programs, ``reason`` for people."""
        self.send({"type": "kicked", "code": code, "reason": reason})
        self.user_id = None
        self.conn.close()

    def reset(self) -> None:
        """Forget the user (logout) but keep the connection usable."""
        self.user_id = None
        self.name = None
        self.admin = False
        self.max_sent = 0
        self.acked = 0
        self.syncing = False
        self._drop_held()
        self.token = ""
        self.remembered = None
        self.login = None
        if self.seen is not None:
            self.seen = set()
