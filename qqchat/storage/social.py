"""Friends and friend requests, and what a login reply shows of a user's circle.

Two accepts at once must not both pass the friend cap: the two users rows are
locked, in id order, before the counts are read (``Engine.lock_rows``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from qqchat.storage.access import Access
from qqchat.storage.groups import groups_page


@dataclass(slots=True)
class LoginView:
    """What a login reply shows of the user's circle."""

    friends: list[tuple[int, str]]
    groups: list[dict[str, Any]]
    requests: list[tuple[int, str, int]]


class SocialStore(Access):
    """Friendships and requests; Deferreds fire in the reactor thread."""

    _FRIENDS = ("SELECT u.id, u.name FROM friends f JOIN users u ON u.id = f.friend_id "
                "WHERE f.user_id = ? AND f.friend_id > ? ORDER BY f.friend_id LIMIT ?")
    _REQUESTS = ("SELECT r.from_id, u.name, r.created_at FROM friend_requests r "
                 "JOIN users u ON u.id = r.from_id WHERE r.to_id = ? "
                 "ORDER BY r.created_at, r.from_id")

    def friends_of(self, user_id: int, after: int = 0, limit: int = 1 << 30
                   ) -> defer.Deferred[list[tuple[int, str]]]:
        """One page of the user's friends, by id, after the friend ``after``."""
        d = self._all(self._FRIENDS, user_id, after, limit)
        d.addCallback(lambda rows: [(int(fid), name) for fid, name in rows])
        return d

    def login_view(self, user_id: int, friends_page: int, groups_per_page: int,
                   members_preview: int) -> defer.Deferred[LoginView]:
        """The first pages of friends and groups (each with its first members) and the
        pending requests: what a login reply shows, read in one interaction. One
        more row than a page is read, to tell whether there are more. (The login
        time is noted by ``backlog_start``, where it also names the login.)"""
        q_friends, q_requests = self._q(self._FRIENDS), self._q(self._REQUESTS)
        engine = self._engine

        def txn(t: Any) -> LoginView:
            t.execute(q_friends, (user_id, 0, friends_page + 1))
            friends = [(int(fid), name) for fid, name in t.fetchall()]
            groups = groups_page(t, engine, user_id, 0, groups_per_page + 1, members_preview)
            t.execute(q_requests, (user_id,))
            requests = [(int(rid), name, int(ts)) for rid, name, ts in t.fetchall()]
            return LoginView(friends, groups, requests)

        return self._run(txn)

    def friend_ids(self, user_id: int) -> defer.Deferred[list[int]]:
        d = self._all("SELECT friend_id FROM friends WHERE user_id = ?", user_id)
        d.addCallback(lambda rows: [int(r[0]) for r in rows])
        return d

    def _friend_count(self, t: Any, user_id: int) -> int:
        t.execute(self._q("SELECT COUNT(*) FROM friends WHERE user_id = ?"), (user_id,))
        return int(t.fetchone()[0])

    def _lock_users(self, t: Any, a: int, b: int) -> None:
        """Serialise friendship changes of two users, so that two accepts at once
        cannot both pass the friend cap (SQLite writes are serial already)."""
        self._engine.lock_rows(t, self._q("SELECT id FROM users WHERE id IN (?, ?) ORDER BY id"),
                               (a, b))

    def _full(self, t: Any, a: int, b: int, max_friends: int) -> bool:
        self._lock_users(t, a, b)
        return (self._friend_count(t, a) >= max_friends
                or self._friend_count(t, b) >= max_friends)

    def request_friend(self, me: int, other: int, now: int, max_friends: int
                       ) -> defer.Deferred[str]:
        """Record a request. Returns "friends" (already), "accepted" (``other`` had asked
        ``me`` first, so both are friends now), "full" (one of the two has
        ``max_friends`` friends), "requested", or "pending" (the same request was
        made before and is still open)."""
        q_friend = self._q("SELECT 1 FROM friends WHERE user_id = ? AND friend_id = ?")
        q_reverse = self._q("SELECT 1 FROM friend_requests WHERE from_id = ? AND to_id = ?")
        q_dup = q_reverse
        q_ins = self._q("INSERT INTO friend_requests (from_id, to_id, created_at) VALUES (?, ?, ?)")

        def txn(t: Any) -> str:
            t.execute(q_friend, (me, other))
            if t.fetchone():
                return "friends"
            t.execute(q_reverse, (other, me))
            if t.fetchone():
                if self._full(t, me, other, max_friends):
                    return "full"
                self._befriend(t, me, other, now)
                return "accepted"
            t.execute(q_dup, (me, other))
            if t.fetchone():
                return "pending"
            t.execute(q_ins, (me, other, now))
            return "requested"

        return self._run(txn)

    def _befriend(self, t: Any, a: int, b: int, now: int) -> None:
        t.execute(
            self._q("DELETE FROM friend_requests WHERE (from_id = ? AND to_id = ?) "
                    "OR (from_id = ? AND to_id = ?)"),
            (a, b, b, a),
        )
        t.execute(self._q("DELETE FROM friends WHERE (user_id = ? AND friend_id = ?) "
                          "OR (user_id = ? AND friend_id = ?)"), (a, b, b, a))
        t.executemany(
            self._q("INSERT INTO friends (user_id, friend_id, created_at) VALUES (?, ?, ?)"),
            [(a, b, now), (b, a, now)],
        )

    def accept_request(self, me: int, requester: int, now: int, max_friends: int
                       ) -> defer.Deferred[str]:
        """Turn ``requester``'s pending request into a friendship: "accepted", "none"
        (no such request) or "full" (one of the two has ``max_friends`` friends)."""
        q_req = self._q("SELECT 1 FROM friend_requests WHERE from_id = ? AND to_id = ?")

        def txn(t: Any) -> str:
            t.execute(q_req, (requester, me))
            if not t.fetchone():
                return "none"
            if self._full(t, me, requester, max_friends):
                return "full"
            self._befriend(t, me, requester, now)
            return "accepted"

        return self._run(txn)

    def delete_request(self, requester: int, me: int) -> defer.Deferred[bool]:
        q = self._q("DELETE FROM friend_requests WHERE from_id = ? AND to_id = ?")

        def txn(t: Any) -> bool:
            t.execute(q, (requester, me))
            return bool(t.rowcount)

        return self._run(txn)

    def remove_friend(self, me: int, other: int) -> defer.Deferred[bool]:
        q = self._q("DELETE FROM friends WHERE (user_id = ? AND friend_id = ?) "
                    "OR (user_id = ? AND friend_id = ?)")

        def txn(t: Any) -> bool:
            t.execute(q, (me, other, other, me))
            return bool(t.rowcount)

        return self._run(txn)
