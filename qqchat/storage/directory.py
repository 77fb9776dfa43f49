"""Finding people and groups by name, and the conversation list (K3).

Searches are prefix ranges on the folded name (``qqchat.names.fold``), read
from an index on (name_key, id): a search costs the same with a million users
as with a thousand. The conversation list reads the ``conversations`` table
and each group's ``last_id``, which the log writer keeps current, so it never
scans the log; unread counts are index ranges stopped at ``UNREAD_MAX``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from qqchat.names import PREFIX_END
from qqchat.storage.access import Access
from qqchat.storage.log import KIND_DIRECT, KIND_GROUP

#: unread messages counted per conversation; past it a client shows "999+"
UNREAD_MAX = 1000
#: characters of the last message a conversation entry carries
PREVIEW_CHARS = 100


@dataclass(slots=True)
class Conversation:
    kind: int  # KIND_DIRECT or KIND_GROUP
    id: int  # the peer's user id, or the group id
    name: str
    last_id: int
    last_ts: int
    last_from: int
    last_name: str
    last_text: str
    unread: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


class DirectoryStore(Access):
    """Searches and the conversation list. ``derived`` (``LogStore.derive_conversations``)
    fires once the conversation list has every committed message: where the engine
    derives it later, a read of the list waits for it."""

    def __init__(self, *args: Any, derived: Callable[[], defer.Deferred[None]] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._derived = derived

    def _prefix_page(self, t: Any, table: str, columns: str, key: str, after: int | None,
                     limit: int) -> list[tuple[Any, ...]]:
        """Rows of ``table`` whose folded name starts with ``key``, by (name_key, id),
        after the row ``after`` (the last of the previous page).

        User keys are unique, so users are ordered by the key alone: MariaDB then
        reads the unique index in order and stops at ``limit``, where ordering by
        (name_key, id) made it read and sort the whole prefix range (100 000 rows
        for a one-letter query at a million users). Group names repeat, and their
        index is on (name_key, id)."""
        low, skip = key, 0
        if after is not None:
            t.execute(self._q(f"SELECT name_key FROM {table} WHERE id = ?"), (after,))
            row = t.fetchone()
            if row is not None and _text(row[0]) >= key:
                low, skip = _text(row[0]), after
        if table == "users":
            t.execute(self._q(
                f"SELECT {columns} FROM users WHERE name_key {'>' if skip else '>='} ?"
                " AND name_key < ? ORDER BY name_key LIMIT ?"),
                (low, key + PREFIX_END, limit))
        else:
            t.execute(self._q(
                f"SELECT {columns} FROM {table} WHERE name_key >= ? AND name_key < ?"
                " AND NOT (name_key = ? AND id <= ?) ORDER BY name_key, id LIMIT ?"),
                (low, key + PREFIX_END, low, skip, limit))
        return list(t.fetchall())

    def search_users(self, key: str, exact_id: int | None, after: int | None, limit: int,
                     asker: int) -> defer.Deferred[list[tuple[int, str, bool]]]:
        """Up to ``limit`` (id, name, friend of ``asker``): the user ``exact_id`` first
        (on the first page), then names starting with ``key``."""

        def txn(t: Any) -> list[tuple[int, str, bool]]:
            found: list[tuple[int, str]] = []
            if exact_id is not None and after is None:
                t.execute(self._q("SELECT id, name FROM users WHERE id = ?"), (exact_id,))
                found += t.fetchall()
            found += self._prefix_page(t, "users", "id, name", key, after, limit)
            ids = [int(uid) for uid, _ in found]
            friends: set[int] = set()
            if ids:
                t.execute(self._q("SELECT friend_id FROM friends WHERE user_id = ? AND "
                                  f"friend_id IN ({self._placeholders(len(ids))})"),
                          (asker, *ids))
                friends = {int(r[0]) for r in t.fetchall()}
            return [(int(uid), name, int(uid) in friends) for uid, name in found]

        return self._run(txn)

    def search_groups(self, key: str, exact_id: int | None, after: int | None, limit: int,
                      member: int) -> defer.Deferred[list[tuple[int, str, str, int, bool]]]:
        """As ``search_users``, for groups: (id, name, desc, members, ``member`` in it)."""
        q_detail = self._q(
            "SELECT g.id, g.name, g.descr,"
            " (SELECT COUNT(*) FROM group_members c WHERE c.group_id = g.id),"
            " (SELECT COUNT(*) FROM group_members m WHERE m.group_id = g.id AND m.user_id = ?)"
            " FROM chat_groups g WHERE g.id = ?")

        def txn(t: Any) -> list[tuple[int, str, str, int, bool]]:
            ids: list[int] = []
            if exact_id is not None and after is None:
                ids.append(exact_id)
            ids += [int(r[0]) for r in self._prefix_page(t, "chat_groups", "id", key, after,
                                                          limit)]
            out = []
            for gid in ids:
                t.execute(q_detail, (member, gid))
                row = t.fetchone()
                if row is not None:
                    out.append((int(row[0]), row[1], row[2], int(row[3]), bool(row[4])))
            return out

        return self._run(txn)

    def conversations(self, user_id: int, acked: int, before: int, limit: int
                      ) -> defer.Deferred[list[Conversation]]:
        """The user's newest ``limit`` conversations whose last message is below
        ``before``: a page from each kind, merged, then four reads for all of them."""
        q_direct = self._q(
            "SELECT peer_id, last_id FROM conversations WHERE user_id = ? AND last_id < ?"
            " ORDER BY last_id DESC LIMIT ?")
        q_groups = self._q(
            "SELECT g.id, g.last_id, gm.since_id, g.name FROM group_members gm"
            " JOIN chat_groups g ON g.id = gm.group_id"
            " WHERE gm.user_id = ? AND g.last_id > 0 AND g.last_id < ?"
            " ORDER BY g.last_id DESC LIMIT ?")

        def txn(t: Any) -> list[Conversation]:
            self._engine.before_log_read(t)
            t.execute(q_direct, (user_id, before, limit))
            page: list[tuple[int, int, int, int, str]] = [
                (int(last), KIND_DIRECT, int(peer), 0, "") for peer, last in t.fetchall()]
            t.execute(q_groups, (user_id, before, limit))
            page += [(int(last), KIND_GROUP, int(gid), int(since), name)
                     for gid, last, since, name in t.fetchall()]
            page.sort(reverse=True)
            del page[limit:]
            if not page:
                return []
            last_ids = [p[0] for p in page]
            t.execute(self._q(
                f"SELECT m.id, m.ts, m.sender, u.name, SUBSTR(m.body, 1, {PREVIEW_CHARS})"
                " FROM messages m JOIN users u ON u.id = m.sender"
                f" WHERE m.id IN ({self._placeholders(len(last_ids))})"), last_ids)
            last = {int(r[0]): r for r in t.fetchall()}
            peers = sorted({p[2] for p in page if p[1] == KIND_DIRECT})
            names: dict[int, str] = {}
            if peers:
                t.execute(self._q(f"SELECT id, name FROM users WHERE id IN "
                                  f"({self._placeholders(len(peers))})"), peers)
                names = {int(uid): name for uid, name in t.fetchall()}
            unread = self._unread(t, user_id, acked, page)
            out = []
            for (last_id, kind, cid, _, gname), count in zip(page, unread, strict=True):
                row = last.get(last_id)
                if row is None:
                    continue
                out.append(Conversation(
                    kind, cid, names.get(cid, "?") if kind == KIND_DIRECT else gname,
                    last_id, int(row[1]), int(row[2]), row[3], row[4], count))
            return out

        if self._derived is None or not self._engine.derives_later:
            return self._run(txn)  # the read's own before_log_read is enough
        d = self._derived()
        d.addCallback(lambda _: self._run(txn))
        return d

    def _unread(self, t: Any, user_id: int, acked: int,
                page: list[tuple[int, int, int, int, str]]) -> list[int]:
        """For each conversation, the others' messages after the user's acknowledged
        position (and, in a group, after they joined), each count stopped at
        ``UNREAD_MAX``: one statement for the whole page."""
        parts: list[str] = []
        params: list[int] = []
        for k, (_, kind, cid, since, _) in enumerate(page):
            if kind == KIND_DIRECT:
                parts.append(f"SELECT {k}, COUNT(*) FROM (SELECT 1 FROM messages"
                             " WHERE kind = 1 AND sender = ? AND recipient = ? AND id > ?"
                             f" AND sender <> recipient LIMIT {UNREAD_MAX}) d{k}")
                params += (cid, user_id, acked)
            else:
                parts.append(f"SELECT {k}, COUNT(*) FROM (SELECT 1 FROM messages"
                             " WHERE kind = 2 AND group_id = ? AND id > ? AND sender <> ?"
                             f" LIMIT {UNREAD_MAX}) g{k}")
                params += (cid, max(acked, since), user_id)
        t.execute(self._q(" UNION ALL ".join(parts)), params)
        counts = [0] * len(page)
        for k, n in t.fetchall():
            counts[int(k)] = int(n)
        return counts
