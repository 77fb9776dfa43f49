"""Single-node relay: every session lives in this process."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from qqchat.relay.hub import SessionHub
from qqchat.session import Session


class LocalRelay:
    """Delivers straight to this node's sessions."""

    ordered = True

    def __init__(self, hub: SessionHub) -> None:
        self.hub = hub

    async def claim(self, session: Session, kick: bool) -> bool:
        assert session.user_id is not None
        old = self.hub.get(session.user_id)
        if old is not None and old is not session:
            if not kick:
                return False
            self.hub.detach(old)
            old.kick("logged in from another place")
        self.hub.attach(session)
        return True

    async def release(self, session: Session) -> bool:
        return self.hub.detach(session)

    def deliver(self, user_ids: Iterable[int], msg_id: int, line: bytes) -> None:
        self.deliver_here(user_ids, msg_id, line)

    def notify(self, user_ids: Iterable[int], line: bytes) -> None:
        self.notify_here(user_ids, line)

    def deliver_here(self, user_ids: Iterable[int], msg_id: int, line: bytes) -> list[int]:
        """Push to the sessions here; returns the users who have none on this node
        (the cluster relay forwards to those). ``_each_here`` written out: this runs
        once per recipient of every message."""
        get = self.hub.get
        away = []
        for uid in user_ids:
            session = get(uid)
            if session is not None:
                session.deliver(msg_id, line)
            else:
                away.append(uid)
        return away

    def notify_here(self, user_ids: Iterable[int], line: bytes) -> list[int]:
        """As ``deliver_here``, for an event that is not a stored message."""
        return self._each_here(user_ids, lambda session: session.notify(line))

    def _each_here(self, user_ids: Iterable[int], push: Callable[[Session], None]
                   ) -> list[int]:
        get = self.hub.get
        away = []
        for uid in user_ids:
            session = get(uid)
            if session is not None:
                push(session)
            else:
                away.append(uid)
        return away

    def deliver_all(self, msg_id: int, line: bytes, exclude: int) -> None:
        for session in self.hub:
            if session.user_id != exclude:
                session.deliver(msg_id, line)

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        get = self.hub.get
        return {uid for uid in user_ids if get(uid) is not None}

    async def who(self, offset: int, limit: int) -> tuple[int, list[tuple[int, str]]]:
        ids = self.hub.user_ids()
        page = []
        for uid in ids[offset : offset + limit]:
            session = self.hub.get(uid)
            if session is not None and session.name is not None:
                page.append((uid, session.name))
        return len(ids), page
