"""Chat, group chat, broadcast, acks, history and the login backlog (F6-F8, F10, F11).

Every message is appended to the durable log before the sender's reply; the
live push that follows is only the fast path. What a client has not acked is
sent again at its next login, in id order.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from qqchat.codec import encode
from qqchat.errors import ChatError
from qqchat.metrics import Registry
from qqchat.ratelimit import KeyedBuckets
from qqchat.relay.base import Relay
from qqchat.services.limits import Limits
from qqchat.services.users import UserDirectory
from qqchat.session import Session
from qqchat.storage.groups import GroupStore
from qqchat.storage.log import (
    KIND_BROADCAST,
    KIND_DIRECT,
    KIND_GROUP,
    LogStore,
    MessageRow,
    NewMessage,
    Stored,
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
    def __init__(self, message_log: LogStore, groups: GroupStore, writer: LogWriter, relay: Relay,
                 users: UserDirectory,
                 limits: Limits, clock: IReactorTime, metrics: Registry | None = None,
                 broadcast_anyone: bool = False) -> None:
        self._message_log = message_log
        self._groups = groups
        #: R9: with False (--broadcast admins), only admin accounts broadcast
        self._broadcast_anyone = broadcast_anyone
        self._writer = writer
        self._relay = relay
        self._users = users
        self._limits = limits
        self._clock = clock
        self._sends = KeyedBuckets(limits.send_rate, limits.send_burst)
        stored = (metrics if metrics is not None else Registry()).counter(
            "qqchat_messages_stored_total", "Messages committed to the log, by kind.", ["kind"])
        self._stored = {KIND_DIRECT: stored.labels("direct"), KIND_GROUP: stored.labels("group"),
                        KIND_BROADCAST: stored.labels("broadcast")}

    def _check_text(self, text: str) -> None:
        if not text.strip():
            raise ChatError("empty_text", "the message text is empty")
        if len(text) > self._limits.text_max:
            raise ChatError("too_long", f"a message is at most {self._limits.text_max} "
                                        "characters")

    @staticmethod
    def _sender(session: Session) -> tuple[int, str]:
        """The acting user, read once: a kick during an await must not change it."""
        if session.user_id is None or session.name is None:
            raise ChatError("not_logged_in", "log in first")
        return session.user_id, session.name

    def _author(self, session: Session, text: str) -> tuple[int, str]:
        """The sender of a new message, once the text and their send rate allow it."""
        self._check_text(text)
        uid, name = self._sender(session)
        wait = self._sends.take(uid, self._clock.seconds())
        if wait:
            raise ChatError("rate_limited", "you are sending too fast; slow down",
                            retry_after=round(wait + 0.005, 2))
        return uid, name

    # The sending paths below are callback chains, not coroutines: they run once per
    # message, and a coroutine costs two more Deferred hops than a callback on the
    # log's own Deferred. Pushes happen in the callback that reports the commit:
    # batches commit in id order, so one node's pushes leave in id order.

    def _line_for(self, stored: Stored, name: str, message: NewMessage
                  ) -> tuple[Stored, bytes | None] | defer.Deferred[tuple[Stored, bytes | None]]:
        """The push line for a freshly stored message, or None when there is nothing
        (more) to push."""
        if stored.not_member:
            return stored, None
        if stored.duplicate:
            if self._relay.ordered:
                return stored, None  # one node: the first try's push went out with its commit
            return defer.Deferred.fromCoroutine(self._stored_again(stored, message))
        self._stored[message.kind].inc()
        row: MessageRow = (stored.id, message.kind, message.sender, name,
                           message.recipient, message.group_id, message.body, stored.ts)
        return stored, encode(message_frame(row))

    async def _stored_again(self, stored: Stored, message: NewMessage
                            ) -> tuple[Stored, bytes | None]:
        """Several nodes: the first try may have committed and then failed before its
        push (the sender saw `unavailable`). Push the stored original again; sessions
        drop ids they have already been sent."""
        original = await self._message_log.message(stored.id)
        if original is None:
            return stored, None
        if message.group_id is not None:
            stored.members = await self._groups.group_member_ids(message.group_id)
        return stored, encode(message_frame(original))

    def _append(self, name: str, message: NewMessage
                ) -> defer.Deferred[tuple[Stored, bytes | None]]:
        return self._writer.append(message).addCallback(self._line_for, name, message)

    @staticmethod
    def _reply(stored: Stored) -> dict[str, Any]:
        body: dict[str, Any] = {"id": stored.id, "ts": stored.ts}
        if stored.duplicate:
            body["duplicate"] = True
        return body

    def chat(self, session: Session, to: int, text: str, cid: str | None
             ) -> defer.Deferred[dict[str, Any]]:
        uid, name = self._author(session, text)
        message = NewMessage(KIND_DIRECT, uid, text, recipient=to, cid=cid)
        if self._users.cached(to) is not None:
            d = self._append(name, message)
        else:
            d = defer.Deferred.fromCoroutine(self._users.name_of(to))
            d.addCallback(self._append_to_known, name, message)
        return d.addCallback(self._chat_stored, to)

    def _append_to_known(self, found: str | None, name: str, message: NewMessage
                         ) -> defer.Deferred[tuple[Stored, bytes | None]]:
        if found is None:
            raise ChatError("no_such_user", f"there is no user {message.recipient}")
        return self._append(name, message)

    def _chat_stored(self, result: tuple[Stored, bytes | None], to: int) -> dict[str, Any]:
        stored, line = result
        if line is not None:
            self._relay.deliver((to,), stored.id, line)
        return self._reply(stored)

    def broadcast(self, session: Session, text: str, cid: str | None
                  ) -> defer.Deferred[dict[str, Any]]:
        if not (self._broadcast_anyone or session.admin):
            raise ChatError("forbidden", "only administrators may broadcast on this server")
        uid, name = self._author(session, text)
        d = self._append(name, NewMessage(KIND_BROADCAST, uid, text, cid=cid))
        return d.addCallback(self._broadcast_stored, uid)

    def _broadcast_stored(self, result: tuple[Stored, bytes | None], uid: int
                          ) -> dict[str, Any]:
        stored, line = result
        if line is not None:
            self._relay.deliver_all(stored.id, line, exclude=uid)
        return self._reply(stored)

    def group_chat(self, session: Session, gid: int, text: str, cid: str | None
                   ) -> defer.Deferred[dict[str, Any]]:
        uid, name = self._author(session, text)
        # membership is checked, and the recipients read, inside the log transaction
        d = self._append(name, NewMessage(KIND_GROUP, uid, text, group_id=gid, cid=cid))
        return d.addCallback(self._group_stored, uid, gid)

    def _group_stored(self, result: tuple[Stored, bytes | None], uid: int, gid: int
                      ) -> dict[str, Any] | defer.Deferred[dict[str, Any]]:
        stored, line = result
        if stored.not_member:
            return defer.Deferred.fromCoroutine(self._refused_in_group(gid))
        if line is not None and stored.members:
            self._relay.deliver([m for m in stored.members if m != uid], stored.id, line)
        return self._reply(stored)

    async def _refused_in_group(self, gid: int) -> dict[str, Any]:
        if await self._groups.group(gid) is None:
            raise ChatError("no_such_group", f"there is no group {gid}")
        raise ChatError("not_member", f"you are not a member of group {gid}")

    def idle(self) -> defer.Deferred[None]:
        return self._writer.idle()

    def ack(self, session: Session, message_id: int
            ) -> dict[str, Any] | defer.Deferred[dict[str, Any]]:
        uid, _ = self._sender(session)
        if message_id <= session.acked:
            return {"id": message_id}  # already durable: a repeated ack is harmless
        if message_id > session.max_sent:
            raise ChatError("bad_ack", f"message {message_id} has not been delivered to you")
        if session.seen is not None:
            return defer.Deferred.fromCoroutine(self._ack_seen(session, uid, message_id))
        return self._writer.ack(uid, message_id).addCallback(
            self._acked, session, message_id, message_id)

    async def _ack_seen(self, session: Session, uid: int, message_id: int) -> dict[str, Any]:
        """Several nodes: pushes from different nodes can cross, so the log says how
        far the ack may go: up to the first message of the user's this session has
        not been sent. Ids commit in id order, so all up to ``message_id`` are readable."""
        upto = await self._writer.checked_ack(uid, session.acked, message_id,
                                           frozenset(session.seen or ()), session.login)
        return self._acked(None, session, message_id, upto)

    @staticmethod
    def _acked(_: object, session: Session, message_id: int, upto: int) -> dict[str, Any]:
        session.acknowledged(upto)
        reply: dict[str, Any] = {"id": message_id}
        if upto != message_id:
            reply["acked"] = session.acked
        return reply

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
        uid, _ = self._sender(session)
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
