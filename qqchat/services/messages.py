"""The login backlog, resync and history (F7, F8): what a client missed, read from
the log. Every message is appended to the durable log before the sender's reply
(``hotpath.py``); the live push is only the fast path, and what a client has not
acked is sent again at its next login, in id order.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from qqchat.codec import encode
from qqchat.errors import ChatError
from qqchat.relay.base import Relay
from qqchat.services.limits import Limits
from qqchat.services.users import UserDirectory
from qqchat.session import Session
from qqchat.storage.groups import GroupStore
from qqchat.storage.log import (
    KIND_DIRECT,
    KIND_GROUP,
    LogStore,
    MessageRow,
)
from qqchat.storage.writer import LogWriter


def message_frame(row: MessageRow) -> dict[str, Any]:
    """The ``message`` push for one stored row, as live delivery and the backlog send it."""
    mid, kind, sender, name, recipient, gid, body, ts = row
    frame: dict[str, Any] = {"type": "message", "id": mid, "from": sender, "name": name,
                             "text": body, "ts": ts}
    if kind == KIND_DIRECT:
        frame["to"] = recipient
    elif kind == KIND_GROUP:
        frame["group"] = gid
    else:
        frame["broadcast"] = True
    return frame


class MessageService:
    """The login backlog, resync after a relay outage, and history: what reads the log.
    Sending and acks are ``hotpath.py``'s."""

    def __init__(self, message_log: LogStore, groups: GroupStore, writer: LogWriter,
                 relay: Relay, users: UserDirectory, limits: Limits, clock: IReactorTime
                 ) -> None:
        self._message_log = message_log
        self._groups = groups
        self._writer = writer
        self._relay = relay
        self._users = users
        self._limits = limits
        self._clock = clock

    def idle(self) -> defer.Deferred[None]:
        return self._writer.idle()

    async def resync(self, session: Session) -> int:
        """Send what a live session missed while pushes could not reach it (the relay
        was cut off): the log is the record, publish/subscribe only the fast path."""
        uid = session.user_id
        if uid is None or session.syncing:
            return 0
        after, count = session.acked, 0
        while True:
            rows = await self._message_log.undelivered(uid, after, self._limits.backlog_page)
            if session.closed or session.user_id != uid:
                return count
            for row in rows:
                if session.seen is None or row[0] not in session.seen:
                    session.deliver(row[0], encode(message_frame(row)))
                    count += 1
                after = row[0]
            if len(rows) < self._limits.backlog_page:
                return count

    async def sync(self, session: Session) -> int:
        """Send what the user has not acked, in pages, then ``synced`` and the live
        messages held meanwhile. Returns how many backlog messages were sent.

        Pending acks (say, from a session this login just replaced) are committed
        first, so the backlog never repeats what the client was told is acked; an
        old session's ack on another node is either read by ``backlog_start`` or
        refused (``LogStore.checked_acks``).
        """
        uid = session.user_id
        if uid is None:
            raise ChatError("not_logged_in", "log in first")
        await self._writer.acks_written(uid)
        page = self._limits.backlog_page
        start = await self._message_log.backlog_start(uid, page, int(self._clock.seconds() * 1000))
        after, rows = start.acked, start.rows
        session.acked, session.login = after, start.login
        if not self._relay.ordered:
            session.seen = set()
        count = 0
        while True:
            if session.closed or session.user_id != uid:
                return count
            for row in rows:
                session.send_line(encode(message_frame(row)))
                after = session.max_sent = row[0]
                if session.seen is not None:
                    session.seen.add(after)
                count += 1
                writable = session.conn.writable()
                if not writable.called:
                    # the client reads slower than we write: wait rather than buffer
                    await writable
                    if session.closed or session.user_id != uid:
                        return count
            if len(rows) < page:
                break
            rows = await self._message_log.undelivered(uid, after, page)
        session.send({"type": "synced", "count": count})
        session.end_sync()
        return count

    async def history(self, session: Session, with_user: int | None, group: int | None,
                      before: int | None, limit: int) -> dict[str, Any]:
        uid = session.user_id
        assert uid is not None
        before = before if before is not None else 2**62
        if group is not None:
            if await self._groups.member_role(group, uid) is None:
                if await self._groups.group(group) is None:
                    raise ChatError("no_such_group", f"there is no group {group}")
                raise ChatError("not_member", f"you are not a member of group {group}")
            rows = await self._message_log.history_group(group, before, limit)
        else:
            assert with_user is not None
            if await self._users.name_of(with_user) is None:
                raise ChatError("no_such_user", f"there is no user {with_user}")
            rows = await self._message_log.history_direct(uid, with_user, before, limit)
        rows.reverse()
        return {"messages": [message_frame(r) for r in rows], "more": len(rows) == limit}
