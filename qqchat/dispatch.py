"""Request validation, routing to services, and the error shape clients see (P1, P2, P5).

Handlers are ``handle_<type>`` methods, found by name. Each pulls its fields
through the ``_str``/``_id`` helpers, which raise ``missing_field`` or
``bad_field``; any ``ChatError`` becomes an error frame with its code, and any
other exception is logged once here and reported as ``internal``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from qqchat.errors import ChatError
from qqchat.frames import MISSING as _MISSING
from qqchat.frames import Frame, Reply, error_frame, failure_frame, reply_frame
from qqchat.metrics import Registry
from qqchat.services.accounts import AccountService
from qqchat.services.conversations import ConversationService
from qqchat.services.friends import FriendService
from qqchat.services.groups import GroupService
from qqchat.services.hotpath import HotPath
from qqchat.services.limits import Limits
from qqchat.services.messages import MessageService
from qqchat.services.presence import PresenceService
from qqchat.services.search import SearchService
from qqchat.session import Session

__all__ = ["Dispatcher", "Frame", "error_frame", "reply_frame"]

#: a handler returns its reply body (None: it wrote its own reply), or a Deferred or
#: coroutine of one; the hot path's handlers (``_FRAMED``) take the request's ``req``
#: and return the whole reply frame, or a Deferred of it
Handler = Callable[..., Any]

_MAX_ID = 2**53  # ids stay exact in every JSON client
_NUMBER = (int, float)
#: the only requests served before login
_ANONYMOUS = frozenset({"register", "login", "ping"})
#: the hot path's requests: their handlers build the reply frame themselves
_FRAMED = frozenset({"chat", "group_chat", "broadcast", "ack"})


def _get(msg: Frame, key: str, required: bool) -> Any:
    value = msg.get(key, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise ChatError("missing_field", f"field {key!r} is required", field=key)
        return _MISSING
    return value


def _str(msg: Frame, key: str, required: bool = True) -> str | None:
    value = _get(msg, key, required)
    if value is _MISSING:
        return None
    if not isinstance(value, str):
        raise ChatError("bad_field", f"field {key!r} must be a string", field=key)
    return value


def _int(msg: Frame, key: str, required: bool = True, low: int = 1, high: int = _MAX_ID,
         what: str = "a positive integer id") -> int | None:
    value = _get(msg, key, required)
    if value is _MISSING:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ChatError("bad_field", f"field {key!r} must be {what}", field=key)
    return value


def _id(msg: Frame, key: str) -> int:
    value = _int(msg, key)
    assert value is not None
    return value


class Dispatcher:
    log = Logger()

    def __init__(self, accounts: AccountService, presence: PresenceService,
                 messages: MessageService, hot: HotPath, friends: FriendService,
                 groups: GroupService, search: SearchService,
                 conversations: ConversationService, limits: Limits,
                 metrics: Registry | None = None) -> None:
        self.accounts = accounts
        self.presence = presence
        self.messages = messages
        self.hot = hot
        self.friends = friends
        self.groups = groups
        self.search = search
        self.conversations = conversations
        self.limits = limits
        self._cleanups: set[defer.Deferred[None]] = set()
        #: request type -> (handler, its request counter, framed), filled as types are first seen
        self._routes: dict[str, tuple[Handler, Any, bool]] = {}
        m = metrics if metrics is not None else Registry()
        self._requests = m.counter("qqchat_requests_total", "Requests by type ('unknown': a "
                                   "type the server does not have).", ["type"])
        self._errors = m.counter("qqchat_errors_sent_total", "Error frames sent, by code.",
                                 ["code"])

    # -- the boundary -----------------------------------------------------

    def dispatch(self, session: Session, msg: Any
                 ) -> Frame | Reply | defer.Deferred[Frame | None] | None:
        """Handle one decoded request: the reply frame, None when the handler wrote its
        own reply, a Deferred that fires with one of those (and never fails), or, for
        the hot path's requests, a ``Reply`` (the frame later, without a Deferred)."""
        if not isinstance(msg, dict):
            return error_frame("bad_request", "a request is a JSON object")
        req = msg.get("req", _MISSING)
        if req is not _MISSING and isinstance(req, (dict, list)):
            return error_frame("bad_field", "field 'req' must be a JSON scalar", field="req")
        if isinstance(req, _NUMBER) and not isinstance(req, bool) and abs(req) > _MAX_ID:
            # past 2^53 a number is not echoed exactly (the decoder reads integers past
            # 64 bits as floats, and many clients cannot hold them either)
            return error_frame("bad_field", "field 'req' must be a number within 2^53 of "
                               "zero, or a string", field="req")
        typ = msg.get("type")
        if not isinstance(typ, str):
            code = "missing_field" if typ is None else "bad_field"
            return error_frame(code, "field 'type' must be a string", req=req, field="type")
        route = self._routes.get(typ)
        if route is None:
            handler: Handler | None = getattr(self, "handle_" + typ, None)
            if handler is None:
                self._requests.labels("unknown").inc()
                return error_frame("unknown_type", f"unknown request type {typ!r}", req=req)
            # only real types are kept, so a client cannot grow the table
            route = self._routes[typ] = (handler, self._requests.labels(typ), typ in _FRAMED)
        handler, count, framed = route
        count.value += 1
        if session.user_id is None and typ not in _ANONYMOUS:
            return error_frame("not_logged_in", "log in first", req=req)
        try:
            if framed:
                return handler(session, msg, req)  # type: ignore[no-any-return]
            body = handler(session, msg)
        except ChatError as e:  # refused before any wait: the common error costs no Deferred
            return error_frame(e.code, e.message, req=req, **e.extra)
        except Exception:
            return failure_frame(Failure(), typ, req)
        if isinstance(body, defer.Deferred):
            d = body
        elif body is None or isinstance(body, dict):
            return None if body is None else reply_frame(typ, req, body)
        else:
            d = defer.Deferred.fromCoroutine(body)
        d.addCallbacks(self._reply, failure_frame, callbackArgs=(typ, req),
                       errbackArgs=(typ, req))
        return d

    @staticmethod
    def _reply(body: Frame | None, typ: str, req: Any) -> Frame | None:
        if body is None:
            return None
        return reply_frame(typ, req, body)

    def connection_lost(self, session: Session) -> defer.Deferred[None]:
        d = defer.Deferred.fromCoroutine(self.accounts.disconnected(session))
        d.addErrback(lambda f: self.log.failure("cleanup after disconnect failed", f))
        if not d.called:
            self._cleanups.add(d)
            d.addBoth(lambda r: (self._cleanups.discard(d), r)[1])
        return d

    def drain(self) -> defer.Deferred[Any]:
        """Fires when disconnect cleanups and pending log writes are done (graceful stop)."""
        waits = [*self._cleanups, self.messages.idle()]
        return defer.DeferredList(waits, consumeErrors=True)

    # -- handlers ---------------------------------------------------------

    async def handle_ping(self, session: Session, msg: Frame) -> Frame:
        return {}

    async def handle_register(self, session: Session, msg: Frame) -> Frame:
        name, password = _str(msg, "name"), _str(msg, "password")
        assert name is not None and password is not None
        return await self.accounts.register(name, password, session.address)

    async def handle_login(self, session: Session, msg: Frame) -> None:
        token = _str(msg, "token", required=False)
        password = _str(msg, "password", required=token is None)
        name = _str(msg, "name", required=False)
        uid = None if name is not None else _int(msg, "id", required=False)
        if name is None and uid is None and token is None:
            raise ChatError("missing_field", "login needs 'name' or 'id'", field="name")
        remember = _get(msg, "remember", required=False)
        if remember is not _MISSING and not isinstance(remember, bool):
            raise ChatError("bad_field", "field 'remember' must be true or false",
                            field="remember")
        body = await self.accounts.login(session, password, name=name, user_id=uid,
                                         token=token, remember=remember is True)
        # the reply goes out before the backlog, which follows as message pushes
        session.send(reply_frame("login", msg.get("req", _MISSING), body))
        try:
            await self.messages.sync(session)
        except Exception as e:
            # Logged in, but the backlog could not be read. Ending the connection is
            # the one safe answer: live pushes plus a cumulative ack would otherwise
            # acknowledge the unsent backlog away.
            code = e.code if isinstance(e, ChatError) else "internal"
            if code == "internal":
                self.log.failure("backlog for {uid} failed", uid=session.user_id)
            self._errors.labels(code).inc()  # sent here, not through the protocol's send_frame
            session.send(error_frame(code, "offline messages could not be loaded; "
                                           "closing, log in again"))
            session.conn.close()
        return None

    async def handle_logout(self, session: Session, msg: Frame) -> Frame:
        await self.accounts.logout(session)
        return {}

    async def handle_password_change(self, session: Session, msg: Frame) -> Frame:
        old, new = _str(msg, "old"), _str(msg, "new")
        assert old is not None and new is not None
        return await self.accounts.change_password(session, old, new)

    def _page(self, msg: Frame, default: int, high: int) -> int:
        return _int(msg, "limit", required=False, high=high,
                    what=f"an integer from 1 to {high}") or default

    def _search(self, msg: Frame) -> tuple[str, int | None, int]:
        """The fields both searches take: query, the ``after`` cursor, the page size."""
        query = _str(msg, "query")
        assert query is not None
        lim = self.limits
        return (query, _int(msg, "after", required=False),
                self._page(msg, lim.search_default, lim.search_max))

    async def handle_user_search(self, session: Session, msg: Frame) -> Frame:
        return await self.search.users(session, *self._search(msg))

    async def handle_group_search(self, session: Session, msg: Frame) -> Frame:
        return await self.search.groups(session, *self._search(msg))

    async def handle_conversations(self, session: Session, msg: Frame) -> Frame:
        lim = self.limits
        return await self.conversations.page(
            session, _int(msg, "before", required=False),
            self._page(msg, lim.conversations_default, lim.conversations_max))

    async def handle_who(self, session: Session, msg: Frame) -> Frame:
        lim = self.limits
        limit = _int(msg, "limit", required=False, high=lim.who_max,
                     what=f"an integer from 1 to {lim.who_max}") or lim.who_default
        offset = _int(msg, "offset", required=False, low=0, what="a non-negative integer") or 0
        return await self.presence.who(offset, limit)

    def _cid(self, msg: Frame) -> str | None:
        cid = _get(msg, "cid", required=False)
        if cid is _MISSING:
            return None
        if isinstance(cid, bool) or not isinstance(cid, (str, int)):
            raise ChatError("bad_field", "field 'cid' must be a string or an integer",
                            field="cid")
        cid = str(cid)
        if not 1 <= len(cid) <= self.limits.cid_max:
            raise ChatError("bad_field", f"field 'cid' is 1-{self.limits.cid_max} characters",
                            field="cid")
        return cid

    # The hot path's handlers read well-formed fields directly and leave the helpers
    # (``_id``, ``_str``, ``_cid``) to find and word what is wrong: same answers, a
    # few function calls less per message.

    def _send(self, send: Callable[[Session, Any, int, str, str | None], Reply],
              session: Session, msg: Frame, req: Any, to: str) -> Reply:
        """``send`` (a ``HotPath`` method) with a new message's target (the id in
        field ``to``), text and client id."""
        target, text = msg.get(to), msg.get("text")
        if type(target) is not int or not 1 <= target <= _MAX_ID:
            target = _id(msg, to)
        if type(text) is not str:
            text = _str(msg, "text")
        return send(session, req, target, text, self._cid(msg) if "cid" in msg else None)

    def handle_chat(self, session: Session, msg: Frame, req: Any) -> Reply:
        return self._send(self.hot.chat, session, msg, req, "to")

    def handle_broadcast(self, session: Session, msg: Frame, req: Any) -> Reply:
        text, cid = _str(msg, "text"), self._cid(msg)
        assert text is not None
        return self.hot.broadcast(session, req, text, cid)

    def handle_group_chat(self, session: Session, msg: Frame, req: Any) -> Reply:
        return self._send(self.hot.group_chat, session, msg, req, "group")

    def handle_ack(self, session: Session, msg: Frame, req: Any
                   ) -> Frame | Reply | defer.Deferred[Frame]:
        mid = msg.get("id")
        if type(mid) is not int or not 1 <= mid <= _MAX_ID:
            mid = _id(msg, "id")
        return self.hot.ack(session, req, mid)

    async def handle_history(self, session: Session, msg: Frame) -> Frame:
        lim = self.limits
        group = _int(msg, "group", required=False)
        with_user = None if group is not None else _int(msg, "with", required=False)
        if group is None and with_user is None:
            raise ChatError("missing_field", "history needs 'with' (a user id) or 'group'",
                            field="with")
        before = _int(msg, "before", required=False)
        limit = _int(msg, "limit", required=False, high=lim.history_max,
                     what=f"an integer from 1 to {lim.history_max}") or lim.history_default
        return await self.messages.history(session, with_user, group, before, limit)

    async def handle_friend_add(self, session: Session, msg: Frame) -> Frame:
        return await self.friends.request(session, _id(msg, "to"))

    async def handle_friend_accept(self, session: Session, msg: Frame) -> Frame:
        return await self.friends.accept(session, _id(msg, "from"))

    async def handle_friend_decline(self, session: Session, msg: Frame) -> Frame:
        return await self.friends.decline(session, _id(msg, "from"))

    async def handle_friend_remove(self, session: Session, msg: Frame) -> Frame:
        return await self.friends.remove(session, _id(msg, "id"))

    async def handle_friends(self, session: Session, msg: Frame) -> Frame:
        lim = self.limits
        return await self.friends.list(session, self._after(msg),
                                       self._page(msg, lim.friends_page, lim.friends_page_max))

    @staticmethod
    def _after(msg: Frame) -> int:
        return _int(msg, "after", required=False) or 0

    async def handle_group_create(self, session: Session, msg: Frame) -> Frame:
        name = _str(msg, "name")
        assert name is not None
        return await self.groups.create(session, name, _str(msg, "desc", required=False) or "")

    async def handle_group_join(self, session: Session, msg: Frame) -> Frame:
        return await self.groups.join(session, _id(msg, "group"))

    async def handle_group_leave(self, session: Session, msg: Frame) -> Frame:
        return await self.groups.leave(session, _id(msg, "group"))

    async def handle_group_info(self, session: Session, msg: Frame) -> Frame:
        lim = self.limits
        gid = _id(msg, "group")
        offset = _int(msg, "offset", required=False, low=0, what="a non-negative integer") or 0
        limit = self._page(msg, lim.members_page, lim.members_page_max)
        return {"group": await self.groups.info(gid, offset, limit)}

    async def handle_groups(self, session: Session, msg: Frame) -> Frame:
        lim = self.limits
        return await self.groups.mine(session, self._after(msg),
                                      self._page(msg, lim.groups_page, lim.groups_page_max))

