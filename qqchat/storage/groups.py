"""Groups: creating, joining and leaving them (with their caps), their members, and
a user's page of groups.

A new member's ``since_id`` is the log head read under its share lock
(``log.locked_head``): a message batch in flight commits before or after the
join, never across it, so the member gets exactly the messages after joining.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from qqchat.names import fold
from qqchat.storage.access import Access
from qqchat.storage.engines import Engine
from qqchat.storage.log import locked_head

#: in every transaction that changes a group's members: what tells the log's
#: transactions that the members they kept are stale (``LogStore._members_of``)
_MEMBERS_CHANGED = "UPDATE chat_groups SET members_version = members_version + 1 WHERE id = ?"


class GroupStore(Access):
    """Groups and their members; Deferreds fire in the reactor thread."""

    def _lock_user(self, t: Any, user_id: int) -> None:
        """Serialise one user's group changes, so that two at once cannot both pass a
        cap (SQLite writes are serial already)."""
        self._engine.lock_rows(t, self._q("SELECT id FROM users WHERE id = ?"), (user_id,))

    def _count(self, t: Any, sql: str, *params: Any) -> int:
        t.execute(self._q(sql), params)
        return int(t.fetchone()[0])

    def create_group(self, name: str, desc: str, creator: int, now: int,
                     max_created: int = 0, max_joined: int = 0) -> defer.Deferred[int | str]:
        """The new group's id, or "too_many_created" / "too_many_joined" when the
        creator is at one of the caps (0: none)."""
        q_group = self._q("INSERT INTO chat_groups (name, descr, creator, created_at, name_key) "
                          "VALUES (?, ?, ?, ?, ?)")
        q_member = self._q(
            "INSERT INTO group_members (group_id, user_id, role, since_id, joined_at) "
            "VALUES (?, ?, ?, ?, ?)")

        def txn(t: Any) -> int | str:
            head = locked_head(self._engine, t)
            self._lock_user(t, creator)
            if max_created and self._count(
                    t, "SELECT COUNT(*) FROM chat_groups WHERE creator = ?",
                    creator) >= max_created:
                return "too_many_created"
            if max_joined and self._count(
                    t, "SELECT COUNT(*) FROM group_members WHERE user_id = ?",
                    creator) >= max_joined:
                return "too_many_joined"
            t.execute(q_group, (name, desc, creator, now, fold(name)))
            gid = int(t.lastrowid)
            t.execute(q_member, (gid, creator, "creator", head, now))
            return gid

        return self._run(txn)

    def group(self, gid: int) -> defer.Deferred[tuple[int, str, str, int] | None]:
        return self._one("SELECT id, name, descr, creator FROM chat_groups WHERE id = ?", gid)

    def join_group(self, gid: int, user_id: int, now: int, max_members: int,
                   max_joined: int = 0) -> defer.Deferred[str]:
        """Returns "joined", "already", "full", "no_group", or "too_many" (the user is
        in ``max_joined`` groups already)."""
        # the group row's lock makes concurrent joins count members one at a time
        q_group = self._q("SELECT 1 FROM chat_groups WHERE id = ?" + self._engine.for_update)
        q_count = self._q("SELECT COUNT(*) FROM group_members WHERE group_id = ?")
        q_member = self._q("SELECT 1 FROM group_members WHERE group_id = ? AND user_id = ?")
        q_ins = self._q(
            "INSERT INTO group_members (group_id, user_id, role, since_id, joined_at) "
            "VALUES (?, ?, ?, ?, ?)")
        q_changed = self._q(_MEMBERS_CHANGED)

        def txn(t: Any) -> str:
            head = locked_head(self._engine, t)
            t.execute(q_group, (gid,))
            if not t.fetchone():
                return "no_group"
            t.execute(q_member, (gid, user_id))
            if t.fetchone():
                return "already"
            t.execute(q_count, (gid,))
            if int(t.fetchone()[0]) >= max_members:
                return "full"
            self._lock_user(t, user_id)
            if max_joined and self._count(
                    t, "SELECT COUNT(*) FROM group_members WHERE user_id = ?",
                    user_id) >= max_joined:
                return "too_many"
            try:
                t.execute(q_ins, (gid, user_id, "member", head, now))
            except self._engine.integrity_error:
                return "already"
            t.execute(q_changed, (gid,))
            return "joined"

        return self._run(txn)

    def leave_group(self, gid: int, user_id: int) -> defer.Deferred[bool]:
        q = self._q("DELETE FROM group_members WHERE group_id = ? AND user_id = ?")
        q_changed = self._q(_MEMBERS_CHANGED)

        def txn(t: Any) -> bool:
            # the group row first, as a join locks it: a leave and a join of one group
            # take their locks in one order
            t.execute(q_changed, (gid,))
            t.execute(q, (gid, user_id))
            return bool(t.rowcount)

        return self._run(txn)

    def member_role(self, gid: int, user_id: int) -> defer.Deferred[str | None]:
        d = self._one("SELECT role FROM group_members WHERE group_id = ? AND user_id = ?",
                      gid, user_id)
        d.addCallback(lambda row: row[0] if row else None)
        return d

    def group_members(self, gid: int, offset: int = 0, limit: int = 1 << 30
                      ) -> defer.Deferred[tuple[int, list[tuple[int, str, str]]]]:
        """How many members the group has, and one page of them in join order."""
        q_count = self._q("SELECT COUNT(*) FROM group_members WHERE group_id = ?")
        q_page = self._q(
            "SELECT gm.user_id, u.name, gm.role FROM group_members gm "
            "JOIN users u ON u.id = gm.user_id WHERE gm.group_id = ? "
            "ORDER BY gm.joined_at, gm.user_id LIMIT ? OFFSET ?")

        def txn(t: Any) -> tuple[int, list[tuple[int, str, str]]]:
            t.execute(q_count, (gid,))
            total = int(t.fetchone()[0])
            t.execute(q_page, (gid, limit, offset))
            return total, [(int(uid), name, role) for uid, name, role in t.fetchall()]

        return self._run(txn)

    def group_member_ids(self, gid: int) -> defer.Deferred[list[int]]:
        d = self._all("SELECT user_id FROM group_members WHERE group_id = ?", gid)
        d.addCallback(lambda rows: [int(r[0]) for r in rows])
        return d

    def groups_of(self, user_id: int, after: int, limit: int, members_preview: int
                  ) -> defer.Deferred[list[dict[str, Any]]]:
        return self._run(groups_page, self._engine, user_id, after, limit, members_preview)


def groups_page(t: Any, engine: Engine, user_id: int, after: int, limit: int,
                members_preview: int) -> list[dict[str, Any]]:
    """A page of the user's groups (by id, after ``after``), each with its member
    count and its first ``members_preview`` members: three queries, whatever
    the number of groups or members."""
    q_groups = engine.sql(
        "SELECT g.id, g.name, g.descr, gm.role FROM group_members gm "
        "JOIN chat_groups g ON g.id = gm.group_id WHERE gm.user_id = ? AND g.id > ? "
        "ORDER BY g.id LIMIT ?")
    t.execute(q_groups, (user_id, after, limit))
    groups = {int(gid): {"id": int(gid), "name": name, "desc": desc, "role": role,
                         "members": [], "member_count": 0}
              for gid, name, desc, role in t.fetchall()}
    if not groups:
        return []
    ids = list(groups)
    marks = Access._placeholders(len(ids))
    t.execute(engine.sql(f"SELECT group_id, COUNT(*) FROM group_members "
                      f"WHERE group_id IN ({marks}) GROUP BY group_id"), ids)
    for gid, count in t.fetchall():
        groups[int(gid)]["member_count"] = int(count)
    t.execute(engine.sql(
        "SELECT group_id, user_id, name, role FROM ("
        " SELECT gm.group_id, gm.user_id, u.name, gm.role, gm.joined_at, ROW_NUMBER()"
        "  OVER (PARTITION BY gm.group_id ORDER BY gm.joined_at, gm.user_id) AS n"
        " FROM group_members gm JOIN users u ON u.id = gm.user_id"
        f" WHERE gm.group_id IN ({marks})) x"
        " WHERE n <= ? ORDER BY group_id, joined_at, user_id"), (*ids, members_preview))
    for gid, uid, name, role in t.fetchall():
        groups[int(gid)]["members"].append({"id": int(uid), "name": name, "role": role})
    for g in groups.values():
        g["more_members"] = g["member_count"] > len(g["members"])
    return list(groups.values())

