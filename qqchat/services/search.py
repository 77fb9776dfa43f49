"""Finding users and groups by name or id (K3 ``user_search``, ``group_search``).

Both are rate limited per user on top of the per-connection limit: each is a
database read, and a search box typed into sends one per keystroke.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from qqchat.errors import ChatError
from qqchat.names import fold
from qqchat.ratelimit import KeyedBuckets
from qqchat.relay.base import Relay
from qqchat.services.limits import Limits
from qqchat.session import Session
from qqchat.storage.directory import DirectoryStore

_MAX_ID = 2**53


def _exact_id(query: str, prefix: str = "") -> int | None:
    """The id a query names outright ("12", or "g12" for a group), if it does."""
    if prefix and query[:1].lower() == prefix:
        query = query[1:]
    if query.isascii() and query.isdigit() and 0 < int(query) <= _MAX_ID:
        return int(query)
    return None


class SearchService:
    def __init__(self, directory: DirectoryStore, relay: Relay, clock: IReactorTime,
                 limits: Limits) -> None:
        self._directory = directory
        self._relay = relay
        self._clock = clock
        self._limits = limits
        self._searches = KeyedBuckets(limits.search_rate, limits.search_burst)

    def _start(self, session: Session, query: str) -> tuple[int, str]:
        """The asker and the query's folded key, once the query and the asker's rate
        allow it."""
        uid = session.user_id
        if uid is None:
            raise ChatError("not_logged_in", "log in first")
        query = query.strip()
        if not 1 <= len(query) <= self._limits.query_max:
            raise ChatError("bad_field", f"field 'query' is 1-{self._limits.query_max} "
                                         "characters (spaces around it do not count)",
                            field="query")
        wait = self._searches.take(uid, self._clock.seconds())
        if wait:
            raise ChatError("rate_limited", "you are searching too fast; slow down",
                            retry_after=round(wait + 0.005, 2))
        return uid, query

    async def users(self, session: Session, query: str, after: int | None, limit: int
                    ) -> dict[str, Any]:
        uid, query = self._start(session, query)
        rows = await self._directory.search_users(fold(query), _exact_id(query), after,
                                                  limit + 1, uid)
        more = len(rows) > limit
        rows = rows[:limit]
        online = await self._relay.online([rid for rid, _, friend in rows if friend])
        users: list[dict[str, Any]] = []
        for rid, name, friend in rows:
            entry: dict[str, Any] = {"id": rid, "name": name, "friend": friend}
            if friend:
                entry["online"] = rid in online
            users.append(entry)
        return {"users": users, "more": more}

    async def groups(self, session: Session, query: str, after: int | None, limit: int
                     ) -> dict[str, Any]:
        uid, query = self._start(session, query)
        rows = await self._directory.search_groups(fold(query), _exact_id(query, "g"), after,
                                                   limit + 1, uid)
        more = len(rows) > limit
        return {"groups": [{"id": gid, "name": name, "desc": desc, "members": count,
                            "member": member}
                           for gid, name, desc, count, member in rows[:limit]],
                "more": more}
