"""Accounts: the ``users`` rows a login, a registration and the moderation sweep read
and write. (Session tokens are in ``tokens.py``; the acked position and the login
stamp, which the message log orders against acks, in ``log.py``.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from qqchat.names import fold
from qqchat.storage.access import Access
from qqchat.storage.log import locked_head


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


class AccountStore(Access):
    """Users by name and id; Deferreds fire in the reactor thread."""

    def create_user(self, name: str, pw_hash: str, now: int) -> defer.Deferred[int | None]:
        """Insert a user; None if the name is taken. New users start past the log head,
        so they do not receive broadcasts sent before they existed. The head is read
        under the share lock ``GroupStore.join_group`` takes: no batch commits between
        that read and the account's commit, so a broadcast reaches the account exactly
        when it committed after the account did."""
        q_ins = self._q("INSERT INTO users (name, pw_hash, created_at, acked, name_key) "
                        "VALUES (?, ?, ?, ?, ?)")
        engine = self._engine

        def txn(t: Any) -> int | None:
            head = locked_head(engine, t)
            try:
                t.execute(q_ins, (name, pw_hash, now, head, fold(name)))
            except engine.integrity_error:
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

    def disabled_since(self, since: int) -> defer.Deferred[list[int]]:
        """Accounts disabled at or after ``since`` (ms), for ending their sessions."""
        d = self._all("SELECT id FROM users WHERE disabled_at >= ? AND disabled = 1", since)
        d.addCallback(lambda rows: [int(r[0]) for r in rows])
        return d
