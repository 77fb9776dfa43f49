"""Users, friends, groups and the message log, for SQLite and MySQL alike.

Session tokens are in ``tokens.py`` and the searches and conversation list in
``directory.py``; ``access.py`` holds what they all share.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from qqchat.names import fold
from qqchat.storage.access import Access
from qqchat.storage.schema import move_staged

KIND_DIRECT = 1
KIND_GROUP = 2
KIND_BROADCAST = 3


@dataclass(slots=True)
class UserRow:
    id: int
    name: str
    pw_hash: str
    acked: int
    is_admin: bool = False
    disabled: bool = False


#: the columns of a ``UserRow``, in order
USER_COLUMNS = "id, name, pw_hash, acked, is_admin, disabled"


def user_row(row: Any) -> UserRow | None:
    if row is None:
        return None
    uid, name, pw_hash, acked, is_admin, disabled = row
    return UserRow(int(uid), name, pw_hash, int(acked), bool(is_admin), bool(disabled))


@dataclass(slots=True)
class NewMessage:
    """A message waiting for the log writer; ``cid`` makes client retries idempotent."""

    kind: int
    sender: int
    body: str
    recipient: int | None = None
    group_id: int | None = None
    cid: str | None = None


def _reach(after: int, upto: int, ids: set[int], seen: frozenset[int]) -> int:
    """How far an ack up to ``upto`` may go: below the first of the user's messages in
    (``after``, ``upto``] (``ids``) that the session has not been sent (``seen``)."""
    for mid in sorted(ids):
        if mid not in seen:
            return max(mid - 1, after)
    return upto


def _by_user(row: tuple[int, int, int]) -> int:
    """The user id of an (acked, user id, acked) row: the order rows are locked in."""
    return row[1]


@dataclass(slots=True)
class Stored:
    """The outcome of one append. For a new group message, ``members`` is the group's
    membership read inside the writing transaction: exactly who it belongs to."""

    id: int
    ts: int
    duplicate: bool
    rejected: bool = False
    members: list[int] | None = None


@dataclass(slots=True)
class Backlog:
    """Where a login's backlog starts (``Store.backlog_start``)."""

    #: the acknowledged position the backlog follows
    acked: int
    #: the stamp naming this login; its checked acks carry it
    login: int
    #: the first page of messages after ``acked``
    rows: list[MessageRow]


#: (user, after, upto, seen, login): an ack ``Store.checked_acks`` checks
CheckedAck = tuple[int, int, int, frozenset[int], int | None]


@dataclass(slots=True)
class LoginView:
    """What a login reply shows of the user's circle."""

    friends: list[tuple[int, str]]
    groups: list[dict[str, Any]]
    requests: list[tuple[int, str, int]]


# (id, kind, sender, sender_name, recipient, group_id, body, ts)
MessageRow = tuple[int, int, int, str, int | None, int | None, str, int]

_MESSAGE_COLUMNS = "m.id, m.kind, m.sender, u.name, m.recipient, m.group_id, m.body, m.ts"
_LOG_COLUMNS = "id, kind, sender, recipient, group_id, body, ts, cid"
#: SQLite: staged messages moved into the indexed table once this many wait
STAGE_ROWS = 1000


class Store(Access):
    """Users, friends, groups and the message log; Deferreds fire in the reactor thread."""

    # -- users ------------------------------------------------------------

    def create_user(self, name: str, pw_hash: str, now: int) -> defer.Deferred[int | None]:
        """Insert a user; None if the name is taken. New users start past the log head,
        so they do not receive broadcasts sent before they existed. The head is read
        under the share lock ``join_group`` takes: no batch commits between that read
        and the account's commit, so a broadcast reaches the account exactly when it
        committed after the account did."""
        q_ins = self._q("INSERT INTO users (name, pw_hash, created_at, acked, name_key) "
                        "VALUES (?, ?, ?, ?, ?)")

        def txn(t: Any) -> int | None:
            head = self._locked_head(t)
            try:
                t.execute(q_ins, (name, pw_hash, now, head, fold(name)))
            except self._integrity_error:
                return None
            return int(t.lastrowid)

        return self._run(txn)

    def _user(self, where: str, value: Any) -> defer.Deferred[UserRow | None]:
        d = self._one(f"SELECT {USER_COLUMNS} FROM users WHERE {where} = ?", value)
        d.addCallback(user_row)
        return d

    def user_by_name(self, name: str) -> defer.Deferred[UserRow | None]:
        """The account of this exact name, else the one whose folded name it is
        ("ALICE" logs in as "alice"). Exact first: look-alike accounts made before
        names were folded each keep their own name (``schema._fill_keys``)."""
        q = self._q(f"SELECT {USER_COLUMNS} FROM users WHERE name = ?")
        q_key = self._q(f"SELECT {USER_COLUMNS} FROM users WHERE name_key = ?")

        def txn(t: Any) -> UserRow | None:
            t.execute(q, (name,))
            row = t.fetchone()
            if row is None:
                t.execute(q_key, (fold(name),))
                row = t.fetchone()
            return user_row(row)

        return self._run(txn)

    def user_by_id(self, user_id: int) -> defer.Deferred[UserRow | None]:
        return self._user("id", user_id)

    def user_names(self, ids: Sequence[int]) -> defer.Deferred[dict[int, str]]:
        if not ids:
            return defer.succeed({})
        d = self._all(f"SELECT id, name FROM users WHERE id IN ({self._placeholders(len(ids))})",
                      *ids)
        d.addCallback(lambda rows: {int(r[0]): r[1] for r in rows})
        return d

    # -- friends ----------------------------------------------------------

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

    def login_view(self, user_id: int, friends_page: int, groups_page: int,
                   members_preview: int) -> defer.Deferred[LoginView]:
        """The first pages of friends and groups (each with its first members) and the
        pending requests: what a login reply shows, read in one interaction. One
        more row than a page is read, to tell whether there are more. (The login
        time is noted by ``backlog_start``, where it also names the login.)"""
        q_friends, q_requests = self._q(self._FRIENDS), self._q(self._REQUESTS)

        def txn(t: Any) -> LoginView:
            t.execute(q_friends, (user_id, 0, friends_page + 1))
            friends = [(int(fid), name) for fid, name in t.fetchall()]
            groups = self._groups_txn(t, user_id, 0, groups_page + 1, members_preview)
            t.execute(q_requests, (user_id,))
            requests = [(int(rid), name, int(ts)) for rid, name, ts in t.fetchall()]
            return LoginView(friends, groups, requests)

        return self._run(txn)

    def disabled_since(self, since: int) -> defer.Deferred[list[int]]:
        """Accounts disabled at or after ``since`` (ms), for ending their sessions."""
        d = self._all("SELECT id FROM users WHERE disabled_at >= ? AND disabled = 1", since)
        d.addCallback(lambda rows: [int(r[0]) for r in rows])
        return d

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
        if self.dialect == "mysql":
            t.execute("SELECT id FROM users WHERE id IN (%s, %s) ORDER BY id FOR UPDATE",
                      (a, b))
            t.fetchall()

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

    # -- groups -----------------------------------------------------------

    def _locked_head(self, t: Any) -> int:
        """The log head, read so that a message batch in flight is waited for: a new
        member's ``since_id`` is then exactly the last message not meant for them."""
        if self.dialect == "mysql":
            t.execute("SELECT last_id FROM log_seq WHERE id = 1 LOCK IN SHARE MODE")
        else:
            t.execute("SELECT last_id FROM log_seq WHERE id = 1")
        return int(t.fetchone()[0])

    def _lock_user(self, t: Any, user_id: int) -> None:
        """Serialise one user's group changes, so that two at once cannot both pass a
        cap (SQLite writes are serial already)."""
        if self.dialect == "mysql":
            t.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (user_id,))
            t.fetchall()

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
            head = self._locked_head(t)
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
        lock = " FOR UPDATE" if self.dialect == "mysql" else ""
        q_group = self._q("SELECT 1 FROM chat_groups WHERE id = ?" + lock)
        q_count = self._q("SELECT COUNT(*) FROM group_members WHERE group_id = ?")
        q_member = self._q("SELECT 1 FROM group_members WHERE group_id = ? AND user_id = ?")
        q_ins = self._q(
            "INSERT INTO group_members (group_id, user_id, role, since_id, joined_at) "
            "VALUES (?, ?, ?, ?, ?)")

        def txn(t: Any) -> str:
            head = self._locked_head(t)
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
            except self._integrity_error:
                return "already"
            return "joined"

        return self._run(txn)

    def leave_group(self, gid: int, user_id: int) -> defer.Deferred[bool]:
        q = self._q("DELETE FROM group_members WHERE group_id = ? AND user_id = ?")

        def txn(t: Any) -> bool:
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
        return self._run(self._groups_txn, user_id, after, limit, members_preview)

    def _groups_txn(self, t: Any, user_id: int, after: int, limit: int,
                    members_preview: int) -> list[dict[str, Any]]:
        """A page of the user's groups (by id, after ``after``), each with its member
        count and its first ``members_preview`` members: three queries, whatever
        the number of groups or members."""
        q_groups = self._q(
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
        marks = self._placeholders(len(ids))
        t.execute(self._q(f"SELECT group_id, COUNT(*) FROM group_members "
                          f"WHERE group_id IN ({marks}) GROUP BY group_id"), ids)
        for gid, count in t.fetchall():
            groups[int(gid)]["member_count"] = int(count)
        t.execute(self._q(
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

    # -- the message log --------------------------------------------------

    def write_batch(self, messages: Sequence[NewMessage], acks: Iterable[tuple[int, int]],
                    now: int) -> defer.Deferred[list[Stored]]:
        """Append ``messages`` and apply ``acks`` (user id, message id) in one transaction.

        Ids come from the log_seq row, whose lock is held to commit: transactions
        that write messages commit one after another in id order, on any number of
        daemons, so a cumulative ack can never pass a message that commits late.
        """
        mysql = self.dialect == "mysql"
        # MySQL: LAST_INSERT_ID(expr) hands the new head back with the UPDATE's reply,
        # saving the SELECT's round trip while the log_seq lock is held
        q_reserve = ("UPDATE log_seq SET last_id = LAST_INSERT_ID(last_id + %s) WHERE id = 1"
                     if mysql else "UPDATE log_seq SET last_id = last_id + ? WHERE id = 1")
        q_head = self._q("SELECT last_id FROM log_seq WHERE id = 1")
        q_ins = self._q(f"INSERT INTO {self._log_table} ({_LOG_COLUMNS}) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        q_members = self._q("SELECT user_id FROM group_members WHERE group_id = ?")
        # users rows in id order, as every transaction that locks several takes them
        ack_rows = [(mid, uid, mid) for uid, mid in sorted(acks)]

        def txn(t: Any) -> list[Stored]:
            if mysql and messages and self._one_trip(messages):
                return self._write_in_one_trip(t, messages, ack_rows, now)
            results: list[Stored] = []
            if messages:
                t.execute(q_reserve, (len(messages),))
                if mysql:
                    head = int(t.lastrowid)
                else:
                    t.execute(q_head)
                    head = int(t.fetchone()[0])
                next_id = head - len(messages) + 1
                rows = []
                by_cid = self._stored_cids(
                    t, {(m.sender, m.cid) for m in messages if m.cid is not None})
                # read under the log_seq lock: a join either committed before (and
                # the joiner gets the message) or gets a since_id past it
                members: dict[int, list[int]] = {}
                for m in messages:
                    if m.group_id is not None and m.group_id not in members:
                        t.execute(q_members, (m.group_id,))
                        members[m.group_id] = [int(r[0]) for r in t.fetchall()]
                    group = members.get(m.group_id) if m.group_id is not None else None
                    if group is not None and m.sender not in group:
                        results.append(Stored(0, now, False, rejected=True))
                        continue
                    if m.cid is not None:
                        seen = by_cid.get((m.sender, m.cid))
                        if seen is not None:
                            results.append(Stored(seen.id, seen.ts, True))
                            continue
                    stored = Stored(next_id, now, False, members=group)
                    if m.cid is not None:
                        by_cid[(m.sender, m.cid)] = stored
                    rows.append((next_id, m.kind, m.sender, m.recipient, m.group_id, m.body,
                                 now, m.cid))
                    results.append(stored)
                    next_id += 1
                if rows:
                    t.executemany(q_ins, rows)
                    if mysql:
                        self._write_derived(t, rows)
                    if self._staged:
                        t.execute("SELECT MIN(id) FROM messages_recent")
                        if next_id - int(t.fetchone()[0]) >= STAGE_ROWS:
                            move_staged(t)
            if ack_rows:
                self._write_acks(t, ack_rows)
            return results

        return self._run(txn)

    #: MySQL: the most message text sent as one multi-statement (its packet stays small)
    _ONE_TRIP_BYTES = 256 * 1024

    def _one_trip(self, messages: Sequence[NewMessage]) -> bool:
        """Whether the batch needs nothing read back before it is written: no group
        (its members are read under the lock), no client id (looked up first)."""
        size = 0
        for m in messages:
            if m.group_id is not None or m.cid is not None:
                return False
            size += len(m.body)
        return size * 4 <= self._ONE_TRIP_BYTES

    def _write_in_one_trip(self, t: Any, messages: Sequence[NewMessage],
                           ack_rows: list[tuple[int, int, int]], now: int) -> list[Stored]:
        """MySQL: reserve the ids, insert the rows, apply the acks and read the head back
        in one round trip (a multi-statement), then the commit: two round trips a
        batch instead of four, each of which holds the log_seq lock for every node.
        The rows take their ids from LAST_INSERT_ID, which the UPDATE sets."""
        n = len(messages)
        parts = ["UPDATE log_seq SET last_id = LAST_INSERT_ID(last_id + %s) WHERE id = 1",
                 f"INSERT INTO messages ({_LOG_COLUMNS}) VALUES "
                 + ",".join(["(LAST_INSERT_ID() - %s, %s, %s, %s, NULL, %s, %s, NULL)"] * n),
                 "SELECT LAST_INSERT_ID()"]
        params: list[Any] = [n]
        for k, m in enumerate(messages):
            params += (n - 1 - k, m.kind, m.sender, m.recipient, m.body, now)
        # the conversation list: each pair's newest message, by its offset from the head
        newest: dict[tuple[int, int], int] = {}
        for k, m in enumerate(messages):
            if m.kind == KIND_DIRECT and m.recipient is not None:
                newest[(m.sender, m.recipient)] = newest[(m.recipient, m.sender)] = n - 1 - k
        if newest:
            parts.append("INSERT INTO conversations (user_id, peer_id, last_id) VALUES "
                         + ",".join(["(%s, %s, LAST_INSERT_ID() - %s)"] * len(newest))
                         + self._CONVERSATION_UPSERT)
            for (user, peer), offset in sorted(newest.items()):
                params += (user, peer, offset)
        for row in ack_rows:
            parts.append(self._q(self._ACK))
            params += row
        t.execute(";\n".join(parts), params)
        head = None
        while True:
            if t.description is not None:
                head = int(t.fetchone()[0])
            if not t.nextset():
                break
        if head is None:
            raise RuntimeError("the log head was not returned")
        first = head - n + 1
        return [Stored(first + k, now, False) for k in range(n)]

    _CONVERSATION_UPSERT = (" ON DUPLICATE KEY UPDATE"
                            " last_id = GREATEST(conversations.last_id, VALUES(last_id))")

    def _write_derived(self, t: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        """MySQL: keep the conversation list (each pair's and each group's newest
        message) in step with the rows just inserted, in the same transaction.
        (SQLite does this in bulk when staged rows move: ``schema.move_staged``.)"""
        newest: dict[tuple[int, int], int] = {}
        groups: dict[int, int] = {}
        for mid, kind, sender, recipient, gid, *_ in rows:
            if kind == KIND_DIRECT:
                newest[(sender, recipient)] = newest[(recipient, sender)] = mid
            elif kind == KIND_GROUP:
                groups[gid] = mid
        if newest:
            t.execute("INSERT INTO conversations (user_id, peer_id, last_id) VALUES "
                      + ",".join(["(%s, %s, %s)"] * len(newest)) + self._CONVERSATION_UPSERT,
                      [v for (user, peer), mid in sorted(newest.items())
                       for v in (user, peer, mid)])
        for gid, mid in sorted(groups.items()):
            t.execute("UPDATE chat_groups SET last_id = GREATEST(last_id, %s) WHERE id = %s",
                      (mid, gid))

    _ACK = "UPDATE users SET acked = ? WHERE id = ? AND acked < ?"
    #: MySQL: acks written per multi-statement
    _ACK_CHUNK = 500

    def _write_acks(self, t: Any, rows: Sequence[tuple[int, int, int]]) -> None:
        """Apply (acked, user id, acked) rows, sorted by user id: each UPDATE locks its
        users row until commit, so two transactions (two nodes' acks) that took the
        same rows in opposite orders would deadlock. MySQLdb's ``executemany`` sends
        an UPDATE per row, a round trip each: on MySQL they go as multi-statements
        instead (a group message acked by its 199 receivers at once was 199 round
        trips)."""
        rows = sorted(rows, key=_by_user)
        q = self._q(self._ACK)
        if self.dialect != "mysql":
            t.executemany(q, rows)
            return
        for i in range(0, len(rows), self._ACK_CHUNK):
            chunk = rows[i : i + self._ACK_CHUNK]
            t.execute(";\n".join([q] * len(chunk)), [v for row in chunk for v in row])
            while t.nextset():
                pass

    #: (sender, cid) pairs looked up per statement
    _CID_CHUNK = 100

    def _stored_cids(self, t: Any, keys: set[tuple[int, str]]
                     ) -> dict[tuple[int, str], Stored]:
        """The messages already stored under these (sender, cid) keys, in one statement
        per hundred keys rather than one per message: on MySQL each statement is a
        round trip to the server."""
        found: dict[tuple[int, str], Stored] = {}
        todo = list(keys)
        for i in range(0, len(todo), self._CID_CHUNK):
            chunk = todo[i : i + self._CID_CHUNK]
            where = " OR ".join(["(sender = ? AND cid = ?)"] * len(chunk))
            params = [v for key in chunk for v in key]
            sql = f"SELECT sender, cid, id, ts FROM messages WHERE {where}"
            if self._staged:
                sql += f" UNION ALL SELECT sender, cid, id, ts FROM messages_recent WHERE {where}"
                params += params
            t.execute(self._q(sql), params)
            for sender, cid, mid, ts in t.fetchall():
                if isinstance(cid, bytes):
                    cid = cid.decode()
                found[(int(sender), cid)] = Stored(int(mid), int(ts), False)
        return found

    def message(self, message_id: int) -> defer.Deferred[MessageRow | None]:
        d = self._log_all(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.sender"
            " WHERE m.id = ?", message_id)
        d.addCallback(lambda rows: rows[0] if rows else None)
        return d

    _UNDELIVERED = (
        f"SELECT {_MESSAGE_COLUMNS} FROM ("
        " SELECT id FROM (SELECT id FROM messages WHERE kind = 1 AND recipient = ? AND id > ?"
        "  ORDER BY id LIMIT ?) d"
        " UNION ALL"
        " SELECT id FROM (SELECT m.id FROM group_members gm JOIN messages m"
        "  ON m.group_id = gm.group_id WHERE m.kind = 2 AND gm.user_id = ?"
        "  AND m.id > gm.since_id"
        "  AND m.id > ? AND m.sender <> ? ORDER BY m.id LIMIT ?) g"
        " UNION ALL"
        " SELECT id FROM (SELECT id FROM messages WHERE kind = 3 AND id > ? AND sender <> ?"
        "  ORDER BY id LIMIT ?) b"
        ") x JOIN messages m ON m.id = x.id JOIN users u ON u.id = m.sender"
        " ORDER BY m.id LIMIT ?")

    @staticmethod
    def _undelivered_params(user_id: int, after: int, limit: int) -> tuple[int, ...]:
        return (user_id, after, limit, user_id, after, user_id, limit, after, user_id, limit,
                limit)

    def undelivered(self, user_id: int, after: int, limit: int
                    ) -> defer.Deferred[list[MessageRow]]:
        """The user's messages after ``after`` in id order: one-to-one to them (notes to
        self included), their groups' since they joined, and others' broadcasts."""
        return self._log_all(self._UNDELIVERED,
                             *self._undelivered_params(user_id, after, limit))

    _IDS_BETWEEN = (
        "SELECT id FROM messages WHERE kind = 1 AND recipient = ? AND id > ? AND id <= ?"
        " UNION ALL"
        " SELECT m.id FROM group_members gm JOIN messages m ON m.group_id = gm.group_id"
        " WHERE m.kind = 2 AND gm.user_id = ? AND m.id > gm.since_id AND m.id > ?"
        " AND m.id <= ? AND m.sender <> ?"
        " UNION ALL"
        " SELECT id FROM messages WHERE kind = 3 AND id > ? AND id <= ? AND sender <> ?")

    def checked_acks(self, acks: Sequence[CheckedAck]) -> defer.Deferred[list[int]]:
        """Several nodes: for each (user, ``after``, ``upto``, ``seen``, ``login``),
        acknowledge up to ``upto``, but never past a message of the user's in
        (``after``, ``upto``] that is not in ``seen`` (it may still be on its way from
        another node), and nothing at all once the user has logged in again since the
        login stamped ``login`` (``backlog_start``; None: not checked). All are read
        and written in one transaction (on MySQL, the reads in one round trip and the
        writes in another); returns each position acknowledged (``after`` when nothing
        could be).

        The users rows are locked first, in id order, before anything is read: a
        login's stamp (``backlog_start``) then either commits before this
        transaction reads it (the ack is refused: that login's backlog, read after
        its stamp, may resend these messages, and the reply must not call them
        acknowledged) or waits until this transaction has committed (the login reads
        the new position)."""
        q_ids = self._q(self._IDS_BETWEEN)
        mysql = self.dialect == "mysql"
        users = sorted({a[0] for a in acks})
        q_lock = self._q(f"SELECT id, last_login FROM users WHERE id IN "
                         f"({self._placeholders(len(users))}) ORDER BY id"
                         + (" FOR UPDATE" if mysql else ""))

        def ids_params(user_id: int, after: int, upto: int) -> tuple[int, ...]:
            return (user_id, after, upto, user_id, after, upto, user_id, after, upto,
                    user_id)

        def txn(t: Any) -> list[int]:
            self._settle(t)
            found: list[set[int]] = []
            if mysql:
                params: list[int] = list(users)
                for user_id, after, upto, _, _ in acks:
                    params += ids_params(user_id, after, upto)
                t.execute(";\n".join([q_lock] + [q_ids] * len(acks)), params)
                stamps = {int(uid): int(stamp) for uid, stamp in t.fetchall()}
                while t.nextset():
                    if t.description is not None:
                        found.append({int(r[0]) for r in t.fetchall()})
            else:
                t.execute(q_lock, users)
                stamps = {int(uid): int(stamp) for uid, stamp in t.fetchall()}
                for user_id, after, upto, _, _ in acks:
                    t.execute(q_ids, ids_params(user_id, after, upto))
                    found.append({int(r[0]) for r in t.fetchall()})
            reached = [
                after if login is not None and stamps.get(user_id) != login
                else _reach(after, upto, ids, seen)
                for (user_id, after, upto, seen, login), ids in zip(acks, found, strict=True)]
            rows = [(r, user_id, r)
                    for (user_id, after, *_), r in zip(acks, reached, strict=True)
                    if r > after]
            if rows:
                self._write_acks(t, rows)
            return reached

        return self._run(txn)

    def backlog_start(self, user_id: int, limit: int, now: int) -> defer.Deferred[Backlog]:
        """A login's start, in one transaction: stamp the users row with a value that
        names this login (``users.last_login``: the time in ms, made strictly
        greater than the previous login's), then read the acknowledged position and
        the first page of what follows it.

        The stamp is an UPDATE, so it waits for any ack transaction holding the row
        (one of another node's, say) and the read after it sees that ack; an ack
        of an older login that comes later finds a newer stamp and is refused
        (``checked_acks``). Either way a message this login's backlog sends was
        never confirmed acknowledged to anyone."""
        bump = "GREATEST" if self.dialect == "mysql" else "MAX"
        q_stamp = self._q(f"UPDATE users SET last_login = {bump}(?, last_login + 1) "
                          "WHERE id = ?")
        q_acked = self._q("SELECT acked, last_login FROM users WHERE id = ?")
        q_rows = self._q(self._UNDELIVERED)

        def txn(t: Any) -> Backlog:
            t.execute(q_stamp, (now, user_id))
            self._settle(t)
            t.execute(q_acked, (user_id,))
            row = t.fetchone()
            acked, login = (int(row[0]), int(row[1])) if row else (0, 0)
            t.execute(q_rows, self._undelivered_params(user_id, acked, limit))
            return Backlog(acked, login, list(t.fetchall()))

        return self._run(txn)

    def history_direct(self, a: int, b: int, before: int, limit: int
                       ) -> defer.Deferred[list[MessageRow]]:
        # one index range per direction, newest first, then the newest of both
        return self._log_all(
            f"SELECT {_MESSAGE_COLUMNS} FROM ("
            " SELECT id FROM (SELECT id FROM messages WHERE kind = 1 AND sender = ?"
            "  AND recipient = ? AND id < ? ORDER BY id DESC LIMIT ?) ab"
            " UNION ALL"
            " SELECT id FROM (SELECT id FROM messages WHERE kind = 1 AND sender = ?"
            "  AND recipient = ? AND id < ? ORDER BY id DESC LIMIT ?) ba"
            ") x JOIN messages m ON m.id = x.id JOIN users u ON u.id = m.sender"
            " ORDER BY m.id DESC LIMIT ?",
            a, b, before, limit, b, a, before, limit if a != b else 0, limit,
        )

    def history_group(self, gid: int, before: int, limit: int
                      ) -> defer.Deferred[list[MessageRow]]:
        return self._log_all(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.sender"
            " WHERE m.kind = 2 AND m.group_id = ? AND m.id < ? ORDER BY m.id DESC LIMIT ?",
            gid, before, limit,
        )
