"""Chat, group chat, broadcast, acks, history and the login backlog (F6-F8, F10, F11).

Every message is appended to the durable log before the sender's reply; the
live push that follows is only the fast path. What a client has not acked is
sent again at its next login, in id order.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from qqchat.codec import encode
from qqchat.errors import ChatError
from qqchat.relay.base import Relay
from qqchat.services.limits import Limits
from qqchat.services.users import UserDirectory
from qqchat.session import Session
from qqchat.storage.log import MessageLog
from qqchat.storage.store import (
    KIND_BROADCAST,
    KIND_DIRECT,
    KIND_GROUP,
    MessageRow,
    NewMessage,
    Store,
    Stored,
)


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
    def __init__(self, store: Store, log: MessageLog, relay: Relay, users: UserDirectory,
                 limits: Limits) -> None:
        self._store = store
        self._log = log
        self._relay = relay
        self._users = users
        self._limits = limits

    def _check_text(self, text: str) -> None:
        if not text.strip():
            raise ChatError("empty_text", "the message text is empty")
        if len(text) > self._limits.text_max:
            raise ChatError("too_long", f"a message is at most {self._limits.text_max} "
                                        "characters")

    async def _store_message(self, session: Session, message: NewMessage
                             ) -> tuple[Stored, bytes | None]:
        stored = await self._log.append(message)
        if stored.duplicate:
            return stored, None
        row: MessageRow = (stored.id, message.kind, message.sender, session.name or "",
                           message.recipient, message.group_id, message.body, stored.ts)
        return stored, encode(message_frame(row))

    @staticmethod
    def _reply(stored: Stored) -> dict[str, Any]:
        body: dict[str, Any] = {"id": stored.id, "ts": stored.ts}
        if stored.duplicate:
            body["duplicate"] = True
        return body

    async def chat(self, session: Session, to: int, text: str, cid: str | None
                   ) -> dict[str, Any]:
        self._check_text(text)
        if await self._users.name_of(to) is None:
            raise ChatError("no_such_user", f"there is no user {to}")
        assert session.user_id is not None
        stored, line = await self._store_message(
            session, NewMessage(KIND_DIRECT, session.user_id, text, recipient=to, cid=cid))
        if line is not None:
            self._relay.deliver((to,), stored.id, line)
        return self._reply(stored)

    async def broadcast(self, session: Session, text: str, cid: str | None) -> dict[str, Any]:
        self._check_text(text)
        assert session.user_id is not None
        stored, line = await self._store_message(
            session, NewMessage(KIND_BROADCAST, session.user_id, text, cid=cid))
        if line is not None:
            self._relay.deliver_all(stored.id, line, exclude=session.user_id)
        return self._reply(stored)

    async def group_chat(self, session: Session, gid: int, text: str, cid: str | None
                         ) -> dict[str, Any]:
        self._check_text(text)
        uid = session.user_id
        assert uid is not None
        members = await self._store.group_member_ids(gid)
        if uid not in members:
            if not members and await self._store.group(gid) is None:
                raise ChatError("no_such_group", f"there is no group {gid}")
            raise ChatError("not_member", f"you are not a member of group {gid}")
        stored, line = await self._store_message(
            session, NewMessage(KIND_GROUP, uid, text, group_id=gid, cid=cid))
        if line is not None:
            self._relay.deliver([m for m in members if m != uid], stored.id, line)
        return self._reply(stored)

    def idle(self) -> defer.Deferred[None]:
        return self._log.idle()

    async def ack(self, session: Session, message_id: int) -> dict[str, Any]:
        if message_id > session.max_sent:
            raise ChatError("bad_ack", f"message {message_id} has not been delivered to you")
        assert session.user_id is not None
        await self._log.ack(session.user_id, message_id)
        return {"id": message_id}

    async def sync(self, session: Session, acked: int) -> int:
        """Send what the user has not acked, in pages, then ``synced`` and the live
        messages held meanwhile. Returns how many backlog messages were sent."""
        uid = session.user_id
        assert uid is not None
        page = self._limits.backlog_page
        after, count = acked, 0
        try:
            while True:
                rows = await self._store.undelivered(uid, after, page)
                if session.closed or session.user_id != uid:
                    return count
                for row in rows:
                    session.send_line(encode(message_frame(row)))
                count += len(rows)
                if rows:
                    after = session.max_sent = rows[-1][0]
                if len(rows) < page:
                    break
        finally:
            if session.user_id == uid:
                session.send({"type": "synced", "count": count})
                session.end_sync()
        return count

    async def history(self, session: Session, with_user: int | None, group: int | None,
                      before: int | None, limit: int) -> dict[str, Any]:
        uid = session.user_id
        assert uid is not None
        before = before if before is not None else 2**62
        if group is not None:
            if await self._store.member_role(group, uid) is None:
                if await self._store.group(group) is None:
                    raise ChatError("no_such_group", f"there is no group {group}")
                raise ChatError("not_member", f"you are not a member of group {group}")
            rows = await self._store.history_group(group, before, limit)
        else:
            assert with_user is not None
            if await self._users.name_of(with_user) is None:
                raise ChatError("no_such_user", f"there is no user {with_user}")
            rows = await self._store.history_direct(uid, with_user, before, limit)
        rows.reverse()
        return {"messages": [message_frame(r) for r in rows], "more": len(rows) == limit}
