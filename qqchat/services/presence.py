"""Who is online, and telling friends when that changes (F4, F5, F9)."""

from __future__ import annotations

from twisted.logger import Logger

from qqchat.codec import encode
from qqchat.errors import ChatError
from qqchat.relay.base import Relay
from qqchat.session import Session
from qqchat.storage.social import SocialStore


class PresenceService:
    log = Logger()

    def __init__(self, store: SocialStore, relay: Relay) -> None:
        self._store = store
        self._relay = relay

    async def announce(self, user_id: int, name: str, online: bool,
                       session: Session | None = None, friends: list[int] | None = None
                       ) -> None:
        """Push a presence event to the user's online friends (read here unless the
        caller has just read them); an "online" event is dropped if ``session``
        ended meanwhile."""
        if friends is None:
            friends = await self._store.friend_ids(user_id)
        if session is not None and (session.closed or session.user_id != user_id):
            return
        if friends:
            line = encode({"type": "presence", "user": user_id, "name": name, "online": online})
            self._relay.notify(friends, line)

    async def went_offline(self, session: Session) -> None:
        """Release the session; tell friends only if it was the user's current one."""
        uid, name = session.user_id, session.name
        if uid is None or name is None:
            return
        if await self._relay.release(session):
            try:
                await self.announce(uid, name, False)
            except ChatError as e:
                # the user is offline regardless; friends miss one event
                self.log.warn("presence for {uid} not announced: {code}", uid=uid, code=e.code)

    async def who(self, offset: int, limit: int) -> dict[str, object]:
        total, page = await self._relay.who(offset, limit)
        return {
            "total": total,
            "offset": offset,
            "users": [{"id": uid, "name": name} for uid, name in page],
        }
