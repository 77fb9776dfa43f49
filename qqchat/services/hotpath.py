"""The hot path: chat, group chat, broadcast and ack, from a validated request to the
writes that answer it (F6-F8, F10, F11).

Nearly every request a busy server sees is one of these four, and each costs a share
of one log commit and one or two socket writes. Written as the rest of the daemon is
(a coroutine, or a chain of Deferred callbacks through the service, the dispatcher and
the connection), the layers cost more Python than the work they wrap. So here:

- a request becomes one ``_Send`` (or ``_Ack``) queued with the log writer, which
  calls it back, in log order, when its batch commits: no Deferred of its own;
- for each committed message the push is encoded once and handed to the relay, and
  the finished reply frame (``req`` included) goes straight to the connection, which
  named itself the request's one listener (``frames.Reply``): no Deferred at all;
- a failed batch answers each of its senders with the error at once.

Anything rare (a refusal that needs a lookup, a retry that finds its message stored by
another node) leaves this path for a plain ``async`` method. Every message is in the
durable log before its sender's reply; the push is only the fast path, and what a
client has not acked is sent again at its next login (``messages.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from qqchat.codec import encode
from qqchat.errors import ChatError
from qqchat.frames import MISSING, Frame, Reply, failure_frame
from qqchat.metrics import Registry
from qqchat.ratelimit import KeyedBuckets
from qqchat.relay.base import Relay
from qqchat.services.limits import Limits
from qqchat.services.messages import message_frame
from qqchat.services.users import UserDirectory
from qqchat.session import Session
from qqchat.storage.groups import GroupStore
from qqchat.storage.log import (
    KIND_BROADCAST,
    KIND_DIRECT,
    KIND_GROUP,
    LogStore,
    NewMessage,
    Stored,
)
from qqchat.storage.writer import LogWriter

_TYPES = {KIND_DIRECT: "chat", KIND_GROUP: "group_chat", KIND_BROADCAST: "broadcast"}


class _Waiting:
    """One request waiting for the batch that writes it, as the log writer's
    ``Batcher`` hears it (its ``Waiter``): ``callback`` with the outcome, or
    ``errback`` if the batch failed. Either way the connection's listener
    (``then``, a ``frames.Reply``) gets the finished reply frame."""

    __slots__ = ("_answered", "_frame", "req", "typ")
    # each subclass sets req and typ in its own __init__: one call less per message
    req: Any
    typ: str
    #: the reply, once known, and whoever waits for it
    _frame: Frame | None
    _answered: Callable[[Frame], object] | None

    @property
    def called(self) -> bool:
        return self._frame is not None

    def then(self, answered: Callable[[Frame], object]) -> None:
        if self._frame is None:
            self._answered = answered
        else:
            answered(self._frame)

    def _reply(self, frame: Frame) -> None:
        self._frame = frame
        if self._answered is not None:
            self._answered(frame)

    def answer(self, result: Frame | Failure) -> None:
        """Reply with ``result``, or the error frame of a failure."""
        self._reply(failure_frame(result, self.typ, self.req)
                    if isinstance(result, Failure) else result)

    def errback(self, failure: Failure) -> None:
        self.answer(failure)


class _Send(_Waiting):
    """A chat, group chat or broadcast; its outcome is the message's ``Stored``."""

    __slots__ = ("hot", "message", "name")

    def __init__(self, hot: HotPath, message: NewMessage, name: str, req: Any) -> None:
        self.typ = _TYPES[message.kind]
        self.req = req
        self._frame = self._answered = None
        self.hot = hot
        self.message = message
        self.name = name

    def callback(self, stored: Stored) -> None:
        try:
            frame = self.hot._committed(self, stored)
        except Exception:
            self.errback(Failure())
            return
        if isinstance(frame, defer.Deferred):
            frame.addBoth(self.answer)
        else:
            self._reply(frame)


class _Ack(_Waiting):
    """An ack; the batch that carries it answers nothing of its own."""

    __slots__ = ("message_id", "session")

    def __init__(self, session: Session, message_id: int, req: Any) -> None:
        self.typ = "ack"
        self.req = req
        self._frame = self._answered = None
        self.session = session
        self.message_id = message_id

    def callback(self, _: object) -> None:
        self._reply(_acked(self.session, self.req, self.message_id, self.message_id))


def _acked(session: Session, req: Any, message_id: int, upto: int) -> Frame:
    session.acknowledged(upto)
    frame: Frame = {"type": "ack"}
    if req is not MISSING:
        frame["req"] = req
    frame["id"] = message_id
    if upto != message_id:
        frame["acked"] = session.acked
    return frame


def _reply(typ: str, req: Any, stored: Stored) -> Frame:
    frame: Frame = {"type": typ}
    if req is not MISSING:
        frame["req"] = req
    frame["id"] = stored.id
    frame["ts"] = stored.ts
    if stored.duplicate:
        frame["duplicate"] = True
    return frame


def sender_of(session: Session) -> tuple[int, str]:
    """The acting user, read once: a kick during an await must not change it."""
    if session.user_id is None or session.name is None:
        raise ChatError("not_logged_in", "log in first")
    return session.user_id, session.name


class HotPath:
    """Sends chat, group and broadcast messages and takes acks; each method returns
    the reply frame, or a Deferred that fires with it (never fails)."""

    def __init__(self, message_log: LogStore, groups: GroupStore, writer: LogWriter,
                 relay: Relay, users: UserDirectory, limits: Limits, clock: IReactorTime,
                 metrics: Registry | None = None, broadcast_anyone: bool = False) -> None:
        self._message_log = message_log
        self._groups = groups
        self._writer = writer
        self._relay = relay
        self._users = users
        self._limits = limits
        self._clock = clock
        #: R9: with False (--broadcast admins), only admin accounts broadcast
        self._broadcast_anyone = broadcast_anyone
        self._sends = KeyedBuckets(limits.send_rate, limits.send_burst)
        stored = (metrics if metrics is not None else Registry()).counter(
            "qqchat_messages_stored_total", "Messages committed to the log, by kind.", ["kind"])
        self._stored = {KIND_DIRECT: stored.labels("direct"), KIND_GROUP: stored.labels("group"),
                        KIND_BROADCAST: stored.labels("broadcast")}

    def _author(self, session: Session, text: str) -> tuple[int, str]:
        """The sender of a new message, once the text and their send rate allow it."""
        if not text or text.isspace():  # as ``not text.strip()``, without a copy
            raise ChatError("empty_text", "the message text is empty")
        if len(text) > self._limits.text_max:
            raise ChatError("too_long", f"a message is at most {self._limits.text_max} "
                                        "characters")
        uid, name = sender_of(session)
        wait = self._sends.take(uid, self._clock.seconds())
        if wait:
            raise ChatError("rate_limited", "you are sending too fast; slow down",
                            retry_after=round(wait + 0.005, 2))
        return uid, name

    # -- requests ---------------------------------------------------------

    def chat(self, session: Session, req: Any, to: int, text: str, cid: str | None) -> Reply:
        uid, name = self._author(session, text)
        send = _Send(self, NewMessage(KIND_DIRECT, uid, text, recipient=to, cid=cid), name, req)
        if self._users.cached(to) is None:
            d = defer.Deferred.fromCoroutine(self._to_known(send))
            d.addErrback(send.errback)
        else:
            self._writer.append(send.message, send)
        return send

    async def _to_known(self, send: _Send) -> None:
        """The recipient is not in the name cache: refuse an unknown user before the log."""
        to = send.message.recipient
        if await self._users.name_of(to or 0) is None:
            raise ChatError("no_such_user", f"there is no user {to}")
        self._writer.append(send.message, send)

    def group_chat(self, session: Session, req: Any, gid: int, text: str, cid: str | None
                   ) -> Reply:
        uid, name = self._author(session, text)
        # membership is checked, and the recipients read, inside the log transaction
        send = _Send(self, NewMessage(KIND_GROUP, uid, text, group_id=gid, cid=cid), name, req)
        self._writer.append(send.message, send)
        return send

    def broadcast(self, session: Session, req: Any, text: str, cid: str | None) -> Reply:
        if not (self._broadcast_anyone or session.admin):
            raise ChatError("forbidden", "only administrators may broadcast on this server")
        uid, name = self._author(session, text)
        send = _Send(self, NewMessage(KIND_BROADCAST, uid, text, cid=cid), name, req)
        self._writer.append(send.message, send)
        return send

    def ack(self, session: Session, req: Any, message_id: int
            ) -> Frame | Reply | defer.Deferred[Frame]:
        uid, _ = sender_of(session)
        if message_id <= session.acked:
            return _acked(session, req, message_id, message_id)  # durable already: harmless
        if message_id > session.max_sent:
            raise ChatError("bad_ack", f"message {message_id} has not been delivered to you")
        if session.seen is not None:
            d = defer.Deferred.fromCoroutine(self._ack_seen(session, uid, message_id, req))
            d.addErrback(failure_frame, "ack", req)
            return d
        acking = _Ack(session, message_id, req)
        self._writer.ack(uid, message_id, acking)
        return acking

    async def _ack_seen(self, session: Session, uid: int, message_id: int, req: Any) -> Frame:
        """Several nodes: pushes from different nodes can cross, so the log says how
        far the ack may go: up to the first message of the user's this session has
        not been sent. Ids commit in id order, so all up to ``message_id`` are readable."""
        upto = await self._writer.checked_ack(uid, session.acked, message_id,
                                              frozenset(session.seen or ()), session.login)
        return _acked(session, req, message_id, upto)

    # -- commits ----------------------------------------------------------

    def _committed(self, send: _Send, stored: Stored) -> Frame | defer.Deferred[Frame]:
        """Push a freshly committed message and build its sender's reply. Batches
        commit in id order and call back in log order, so one node's pushes leave in
        id order."""
        m = send.message
        if stored.not_member:
            return defer.Deferred.fromCoroutine(self._refused_in_group(m.group_id or 0))
        if stored.duplicate:
            if self._relay.ordered:
                return _reply(send.typ, send.req, stored)  # one node: its push went with the first
            return defer.Deferred.fromCoroutine(self._stored_again(send, stored))
        self._stored[m.kind].value += 1
        line = encode(message_frame((stored.id, m.kind, m.sender, send.name, m.recipient,
                                     m.group_id, m.body, stored.ts)))
        self._push(m, stored, line)
        return _reply(send.typ, send.req, stored)

    def _push(self, m: NewMessage, stored: Stored, line: bytes) -> None:
        if m.kind == KIND_DIRECT:
            self._relay.deliver((m.recipient or 0,), stored.id, line)
        elif m.kind == KIND_GROUP:
            if stored.members:
                sender = m.sender
                self._relay.deliver([u for u in stored.members if u != sender], stored.id, line)
        else:
            self._relay.deliver_all(stored.id, line, exclude=m.sender)

    async def _stored_again(self, send: _Send, stored: Stored) -> Frame:
        """Several nodes: the first try may have committed and then failed before its
        push (the sender saw ``unavailable``). Push the stored original again; sessions
        drop ids they have already been sent."""
        m = send.message
        original = await self._message_log.message(stored.id)
        if original is not None:
            if m.group_id is not None:
                stored.members = await self._groups.group_member_ids(m.group_id)
            self._push(m, stored, encode(message_frame(original)))
        return _reply(send.typ, send.req, stored)

    async def _refused_in_group(self, gid: int) -> Frame:
        if await self._groups.group(gid) is None:
            raise ChatError("no_such_group", f"there is no group {gid}")
        raise ChatError("not_member", f"you are not a member of group {gid}")
