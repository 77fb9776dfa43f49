"""Friend requests, accept/decline, removal and the friend list (F9)."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from qqchat.codec import encode
from qqchat.errors import ChatError
from qqchat.relay.base import Relay
from qqchat.services.limits import Limits
from qqchat.services.users import UserDirectory
from qqchat.session import Session
from qqchat.storage.social import SocialStore


class FriendService:
    def __init__(self, store: SocialStore, relay: Relay, users: UserDirectory,
                 clock: IReactorTime, limits: Limits) -> None:
        self._store = store
        self._max = limits.friends_max
        self._relay = relay
        self._users = users
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock.seconds() * 1000)

    async def _other(self, session: Session, other: int) -> str:
        if other == session.user_id:
            raise ChatError("is_self", "that is your own id")
        name = await self._users.name_of(other)
        if name is None:
            raise ChatError("no_such_user", f"there is no user {other}")
        return name

    def _full(self) -> ChatError:
        return ChatError("too_many_friends", "you or they already have the most friends "
                                             f"a user may have ({self._max})")

    def _tell(self, user_id: int, frame: dict[str, Any]) -> None:
        self._relay.notify((user_id,), encode(frame))

    async def _friend_entry(self, uid: int, name: str) -> dict[str, Any]:
        online = await self._relay.online((uid,))
        return {"id": uid, "name": name, "online": uid in online}

    async def request(self, session: Session, to: int) -> dict[str, Any]:
        me, my_name = session.user_id, session.name
        assert me is not None
        other_name = await self._other(session, to)
        now = self._now()
        outcome = await self._store.request_friend(me, to, now, self._max)
        if outcome == "full":
            raise self._full()
        if outcome == "friends":
            raise ChatError("already_friends", f"{other_name} is already your friend")
        if outcome == "accepted":
            # they had asked us first: the two requests meet and both become friends
            self._tell(to, {"type": "friend_added", "user": me, "name": my_name, "online": True})
            return {"status": "accepted", "user": to, "name": other_name,
                    "friend": await self._friend_entry(to, other_name)}
        if outcome == "requested":
            # once per request: asking again must not become a way to pester someone
            self._tell(to, {"type": "friend_request", "from": me, "name": my_name, "ts": now})
        return {"status": "requested", "user": to, "name": other_name}

    async def accept(self, session: Session, requester: int) -> dict[str, Any]:
        me = session.user_id
        assert me is not None
        name = await self._other(session, requester)
        outcome = await self._store.accept_request(me, requester, self._now(), self._max)
        if outcome == "full":
            raise self._full()
        if outcome == "none":
            raise ChatError("no_request", f"{name} has not asked to be your friend")
        self._tell(requester, {"type": "friend_added", "user": me, "name": session.name,
                               "online": True})
        return {"friend": await self._friend_entry(requester, name)}

    async def decline(self, session: Session, requester: int) -> dict[str, Any]:
        me = session.user_id
        assert me is not None
        name = await self._other(session, requester)
        if not await self._store.delete_request(requester, me):
            raise ChatError("no_request", f"{name} has not asked to be your friend")
        self._tell(requester, {"type": "friend_declined", "user": me, "name": session.name})
        return {"user": requester, "name": name}

    async def remove(self, session: Session, other: int) -> dict[str, Any]:
        me = session.user_id
        assert me is not None
        name = await self._other(session, other)
        if not await self._store.remove_friend(me, other):
            raise ChatError("not_friend", f"{name} is not your friend")
        self._tell(other, {"type": "friend_removed", "user": me, "name": session.name})
        return {"user": other, "name": name}

    async def list(self, session: Session, after: int, limit: int) -> dict[str, Any]:
        """One page of friends by id; ``more`` says whether another follows."""
        assert session.user_id is not None
        friends = await self._store.friends_of(session.user_id, after, limit + 1)
        more = len(friends) > limit
        del friends[limit:]
        online = await self._relay.online([fid for fid, _ in friends])
        return {"friends": [{"id": fid, "name": name, "online": fid in online}
                            for fid, name in friends], "more": more}
