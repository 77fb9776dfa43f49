"""User names by id, cached: users are never deleted or renamed, so a hit stays true."""

from __future__ import annotations

from qqchat.storage.accounts import AccountStore


class UserDirectory:
    """Answers "does user N exist, and what is their name" without a query per message."""

    def __init__(self, store: AccountStore, max_entries: int = 200_000) -> None:
        self._store = store
        self._names: dict[int, str] = {}
        self._max = max_entries

    def remember(self, user_id: int, name: str) -> None:
        if len(self._names) >= self._max:
            self._names.clear()
        self._names[user_id] = name

    def cached(self, user_id: int) -> str | None:
        """The name if it is known here: the per-message check without a Deferred."""
        return self._names.get(user_id)

    async def name_of(self, user_id: int) -> str | None:
        name = self._names.get(user_id)
        if name is None:
            found = await self._store.user_names([user_id])
            name = found.get(user_id)
            if name is not None:
                self.remember(user_id, name)
        return name
