"""Per-connection state that services act on, independent of the socket code."""

from __future__ import annotations

from typing import Any, Protocol

from qqchat.codec import encode


class Connection(Protocol):
    """What a session needs from the network layer."""

    peer: str

    def send_line(self, line: bytes) -> None: ...

    def close(self) -> None: ...


class Session:
    """One client connection and, once logged in, its user.

    Message pushes go through ``deliver`` so that while the login backlog is
    being sent, live messages are held and then sent after it, in id order and
    without duplicates.
    """

    __slots__ = ("_held", "closed", "conn", "max_sent", "name", "syncing", "user_id")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.user_id: int | None = None
        self.name: str | None = None
        #: highest message id written to this connection; acks may not pass it
        self.max_sent = 0
        self.syncing = False
        #: set by the network layer when the connection is gone
        self.closed = False
        self._held: list[tuple[int, bytes]] = []

    @property
    def peer(self) -> str:
        return self.conn.peer

    def send(self, frame: dict[str, Any]) -> None:
        self.conn.send_line(encode(frame))

    def send_line(self, line: bytes) -> None:
        self.conn.send_line(line)

    def deliver(self, msg_id: int, line: bytes) -> None:
        """Push one stored message (pre-encoded ``line``) to this client."""
        if self.syncing:
            self._held.append((msg_id, line))
            return
        self.conn.send_line(line)
        if msg_id > self.max_sent:
            self.max_sent = msg_id

    def begin_sync(self) -> None:
        self.syncing = True
        self._held = []

    def end_sync(self) -> None:
        """Send what arrived live during the backlog, minus what the backlog covered."""
        held, self._held = self._held, []
        self.syncing = False
        backlog_end = self.max_sent
        for msg_id, line in sorted(held, key=lambda item: item[0]):
            if msg_id > backlog_end:
                self.deliver(msg_id, line)

    def kick(self, reason: str) -> None:
        """End this session because the same user logged in elsewhere."""
        self.send({"type": "kicked", "reason": reason})
        self.user_id = None
        self.conn.close()

    def reset(self) -> None:
        """Forget the user (logout) but keep the connection usable."""
        self.user_id = None
        self.name = None
        self.max_sent = 0
        self.syncing = False
        self._held = []
