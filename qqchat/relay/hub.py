"""The sessions logged in on this node, by user id."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from qqchat.metrics import Registry
from qqchat.session import Session


class SessionHub:
    """This node's user-id -> session map. Both relays deliver through it."""

    def __init__(self, metrics: Registry | None = None) -> None:
        self._by_user: dict[int, Session] = {}
        #: the session of a user id, or None: the dict's own ``get``, as a delivery
        #: looks up every recipient through it
        self.get: Callable[[int], Session | None] = self._by_user.get
        if metrics is not None:
            metrics.gauge("qqchat_users_logged_in", "Users logged in on this node.",
                          self.__len__)

    def __len__(self) -> int:
        return len(self._by_user)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._by_user.values()))

    def attach(self, session: Session) -> None:
        assert session.user_id is not None
        self._by_user[session.user_id] = session

    def detach(self, session: Session) -> bool:
        """Remove ``session`` if it is still the user's current one."""
        uid = session.user_id
        if uid is not None and self._by_user.get(uid) is session:
            del self._by_user[uid]
            return True
        return False

    def user_ids(self) -> list[int]:
        return sorted(self._by_user)
