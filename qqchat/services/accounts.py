"""Register, login, logout (F1-F4): credentials, the one-session rule, the login summary."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from qqchat.errors import ChatError
from qqchat.names import fold
from qqchat.passwords import Hasher
from qqchat.ratelimit import KeyedBuckets
from qqchat.relay.base import Relay
from qqchat.services.limits import Limits
from qqchat.services.presence import PresenceService
from qqchat.services.rules import check_password, check_user_name
from qqchat.services.throttle import HashTurns, LocalCounters, LoginThrottle
from qqchat.services.users import UserDirectory
from qqchat.session import Session
from qqchat.storage.accounts import AccountStore, UserRow
from qqchat.storage.social import SocialStore
from qqchat.storage.tokens import TokenStore, new_token, token_hash

T = TypeVar("T")


class AccountService:
    log = Logger()

    def __init__(self, store: AccountStore, social: SocialStore, hasher: Hasher, relay: Relay,
                 presence: PresenceService, users: UserDirectory, clock: IReactorTime,
                 limits: Limits, tokens: TokenStore, token_ttl: float = 30 * 24 * 3600,
                 kick_on_duplicate: bool = True, throttle: LoginThrottle | None = None,
                 hashes_at_once: int = 2) -> None:
        self._store = store
        self._social = social
        self._turns = HashTurns(hashes_at_once)
        self._throttle = throttle or LoginThrottle(
            LocalCounters(clock), limits.login_failures_account,
            limits.login_failures_address, limits.login_window)
        self._tokens = tokens
        self._token_ttl_ms = int(token_ttl * 1000)
        self._hasher = hasher
        self._relay = relay
        self._presence = presence
        self._users = users
        self._clock = clock
        self._limits = limits
        self._registrations = KeyedBuckets(limits.register_rate / 60, limits.register_burst)
        self.kick_on_duplicate = kick_on_duplicate

    async def _hashed(self, address: str, job: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``job(*args)`` in ``address``'s turn at the hashing threads."""
        await self._turns.turn(address)
        try:
            return await job(*args)
        finally:
            self._turns.done(address)

    def _check_name(self, name: str) -> None:
        check_user_name(name, self._limits)

    def _check_password(self, password: str) -> None:
        check_password(password, self._limits)

    async def register(self, name: str, password: str, address: str) -> dict[str, Any]:
        self._check_name(name)
        self._check_password(password)
        # after the cheap checks, before the costly hash: each try may test a name
        wait = self._registrations.take(address, self._clock.seconds())
        if wait:
            raise ChatError("rate_limited", "too many registrations from your address; "
                                            "try again later", retry_after=round(wait + 0.5))
        pw_hash = await self._hashed(address, self._hasher.hash, password)
        uid = await self._store.create_user(name, pw_hash, int(self._clock.seconds() * 1000))
        if uid is None:
            raise ChatError("name_taken", f"the name {name!r} is taken")
        self._users.remember(uid, name)
        self.log.info("registered user {uid} {name}", uid=uid, name=name)
        return {"id": uid, "name": name}

    def _now(self) -> int:
        return int(self._clock.seconds() * 1000)

    async def login(self, session: Session, password: str | None, name: str | None = None,
                    user_id: int | None = None, token: str | None = None,
                    remember: bool = False) -> dict[str, Any]:
        """Check credentials (a password, or a session token) and make this the
        user's session.

        Returns the reply body (profile, friends, groups, requests, and the token
        when one was asked for or used); the caller then sends the backlog
        (``MessageService.sync``).
        """
        if session.user_id is not None:
            raise ChatError("already_logged_in", "this connection is logged in; log out first")
        digest: str | None = None
        issued = False
        if token is not None:
            digest = token_hash(token)
            row = await self._tokens.resume(digest, self._now(), self._token_ttl_ms)
            if row is None or (name is not None and fold(name) != fold(row.name)) or (
                    user_id is not None and user_id != row.id):
                raise ChatError("bad_token", "this session token is unknown, expired or "
                                             "revoked; log in with your password")
        else:
            row = await self._password_login(password or "", name, user_id, session.address)
            if remember:
                token = new_token()
                digest = token_hash(token)
                await self._tokens.issue(row.id, digest, self._now(), self._token_ttl_ms)
                issued = True
        try:
            body = await self._become(session, row)
        except BaseException:
            if issued and digest is not None:
                await self._tokens.revoke(digest)  # issued for a login that did not happen
            raise
        if token is not None:
            session.remembered = digest
            body["token"] = token
        return body

    async def _password_login(self, password: str, name: str | None, user_id: int | None,
                              address: str) -> UserRow:
        try:
            await self._throttle.check_address(address)
            row = (await self._store.user_by_name(name) if name is not None
                   else await self._store.user_by_id(user_id or 0))
            # one budget per account however it is named; unknown names count too
            account = (f"user:{row.id}" if row is not None
                       else f"name:{fold(name)}" if name is not None else f"user:{user_id}")
            await self._turns.turn(address)
            try:
                await self._throttle.begin(account, address)
                ok = await self._hasher.verify(password, row.pw_hash if row else None)
            finally:
                self._turns.done(address)
        except ChatError as e:
            if e.code == "rate_limited":
                await task.deferLater(self._clock, self._throttle.pause, lambda: None)
            raise
        if not ok or row is None:
            self.log.info("failed login for {who} from {address}",
                          who=name if name is not None else f"id {user_id}", address=address)
            raise ChatError("bad_credentials", "wrong user or password")
        await self._throttle.succeeded(account, address)
        return row

    async def _become(self, session: Session, row: UserRow) -> dict[str, Any]:
        """Claim the one-session slot for ``row``'s user, then read the login summary."""
        if row.disabled:
            raise ChatError("account_disabled", "this account is disabled; ask the "
                                                "operator of this server")
        if session.user_id is not None:
            raise ChatError("already_logged_in", "this connection is logged in; log out first")
        if session.closed:
            raise ChatError("closed", "connection closed during login")
        session.user_id, session.name = row.id, row.name
        session.admin = row.is_admin
        session.begin_sync()
        try:
            claimed = await self._relay.claim(session, self.kick_on_duplicate)
        except BaseException:
            session.reset()
            raise
        if not claimed:
            session.reset()
            raise ChatError("already_online", "this user is logged in elsewhere")
        self._users.remember(row.id, row.name)
        try:
            body = await self._summary(row.id, row.name)
            if session.closed or session.user_id != row.id:
                raise ChatError("closed", "connection closed during login")
            # the whole list is read for the announcement when the reply has only a page
            await self._presence.announce(
                row.id, row.name, True, session,
                friends=None if body["friends_more"] else [f["id"] for f in body["friends"]])
        except BaseException:
            if session.user_id == row.id:
                try:
                    await self._relay.release(session)
                finally:
                    session.reset()
            raise
        self.log.info("login {uid} {name} from {peer}", uid=row.id, name=row.name,
                      peer=session.peer)
        return body

    async def _summary(self, uid: int, name: str) -> dict[str, Any]:
        """The login reply: first pages of friends and groups (R8), the rest by request."""
        lim = self._limits
        view = await self._social.login_view(uid, lim.friends_page, lim.groups_page,
                                            lim.members_preview)
        friends, groups, requests = view.friends, view.groups, view.requests
        friends_more, groups_more = len(friends) > lim.friends_page, len(groups) > lim.groups_page
        del friends[lim.friends_page:], groups[lim.groups_page:]
        ids = {fid for fid, _ in friends}
        for g in groups:
            ids.update(m["id"] for m in g["members"])
        online = await self._relay.online(ids)
        for g in groups:
            for m in g["members"]:
                m["online"] = m["id"] in online
        return {
            "user": {"id": uid, "name": name},
            "friends": [{"id": fid, "name": fname, "online": fid in online}
                        for fid, fname in friends],
            "friends_more": friends_more,
            "groups": groups,
            "groups_more": groups_more,
            "requests": [{"from": rid, "name": rname, "ts": ts} for rid, rname, ts in requests],
        }

    async def change_password(self, session: Session, old: str, new: str) -> dict[str, Any]:
        """Every token of the user is revoked; this session stays logged in, and gets a
        fresh token if it was remembered."""
        uid = session.user_id
        if uid is None:
            raise ChatError("not_logged_in", "log in first")
        self._check_password(new)
        row = await self._store.user_by_id(uid)
        if row is None or not await self._hashed(session.address, self._hasher.verify, old,
                                                 row.pw_hash):
            raise ChatError("bad_credentials", "the old password is wrong")
        pw_hash = await self._hashed(session.address, self._hasher.hash, new)
        await self._tokens.change_password(uid, pw_hash)
        self.log.info("password changed for {uid} from {peer}", uid=uid, peer=session.peer)
        body: dict[str, Any] = {}
        if session.remembered is not None and session.user_id == uid:
            token = new_token()
            session.remembered = token_hash(token)
            await self._tokens.issue(uid, session.remembered, self._now(), self._token_ttl_ms)
            body["token"] = token
        return body

    async def logout(self, session: Session) -> None:
        if session.user_id is None:
            raise ChatError("not_logged_in", "log in first")
        uid = session.user_id
        if session.remembered is not None:
            await self._tokens.revoke(session.remembered)
        await self._presence.went_offline(session)
        session.reset()
        self.log.info("logout {uid} from {peer}", uid=uid, peer=session.peer)

    async def disconnected(self, session: Session) -> None:
        """A dropped connection counts as logout."""
        if session.user_id is not None:
            uid = session.user_id
            await self._presence.went_offline(session)
            self.log.info("dropped {uid} from {peer}", uid=uid, peer=session.peer)
