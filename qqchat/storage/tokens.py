"""Session tokens (K3): issue, resume, revoke. Only a SHA-256 of each token is stored.

A token is 192 random bits, so a fast hash is enough: nobody can guess one to
test against a stolen table, which is what a slow password hash defends against.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from twisted.internet import defer

from qqchat.storage.access import Access
from qqchat.storage.accounts import USER_COLUMNS, UserRow, user_row


def new_token() -> str:
    return secrets.token_urlsafe(24)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


#: live tokens one user may hold (a browser each, say); issuing past it drops the
#: least recently used, so the table cannot grow without bound per user
MAX_PER_USER = 20


class TokenStore(Access):
    def issue(self, user_id: int, digest: str, now: int, ttl_ms: int) -> defer.Deferred[None]:
        """Store a new token's hash; the user's lapsed tokens, and those past
        ``MAX_PER_USER``, are deleted in the same transaction."""
        q_lapsed = self._q("DELETE FROM session_tokens WHERE user_id = ? AND expires_at <= ?")
        q_ins = self._q("INSERT INTO session_tokens (hash, user_id, created_at, last_used, "
                        "expires_at) VALUES (?, ?, ?, ?, ?)")
        q_oldest = self._q("SELECT hash FROM session_tokens WHERE user_id = ? "
                           "ORDER BY last_used DESC, created_at DESC LIMIT 1000 OFFSET ?")
        q_drop = self._q("DELETE FROM session_tokens WHERE hash = ?")

        def txn(t: Any) -> None:
            t.execute(q_lapsed, (user_id, now))
            t.execute(q_ins, (digest, user_id, now, now, now + ttl_ms))
            t.execute(q_oldest, (user_id, MAX_PER_USER))
            extra = [(r[0],) for r in t.fetchall()]
            if extra:
                t.executemany(q_drop, extra)

        return self._run(txn)

    def resume(self, digest: str, now: int, ttl_ms: int) -> defer.Deferred[UserRow | None]:
        """The token's user, if it is live; its use moves its expiry ``ttl_ms`` on.
        An expired token is deleted on the way."""
        q_find = self._q("SELECT user_id, expires_at FROM session_tokens WHERE hash = ?")
        q_touch = self._q("UPDATE session_tokens SET last_used = ?, expires_at = ? "
                          "WHERE hash = ?")
        q_drop = self._q("DELETE FROM session_tokens WHERE hash = ?")
        q_user = self._q(f"SELECT {USER_COLUMNS} FROM users WHERE id = ?")

        def txn(t: Any) -> UserRow | None:
            # a use lost with the OS leaves the token's expiry where it was
            with self._engine.unsynced(t):
                t.execute(q_find, (digest,))
                row = t.fetchone()
                if row is None:
                    return None
                if int(row[1]) <= now:
                    t.execute(q_drop, (digest,))
                    return None
                t.execute(q_touch, (now, now + ttl_ms, digest))
                t.execute(q_user, (int(row[0]),))
                return user_row(t.fetchone())

        return self._run(txn)

    def revoke(self, digest: str) -> defer.Deferred[None]:
        q = self._q("DELETE FROM session_tokens WHERE hash = ?")

        def txn(t: Any) -> None:
            t.execute(q, (digest,))

        return self._run(txn)

    def change_password(self, user_id: int, pw_hash: str) -> defer.Deferred[None]:
        """Set the new hash and revoke every token of the user, in one transaction:
        no token issued against the old password outlives it."""
        q_pw = self._q("UPDATE users SET pw_hash = ? WHERE id = ?")
        q_tokens = self._q("DELETE FROM session_tokens WHERE user_id = ?")

        def txn(t: Any) -> None:
            t.execute(q_pw, (pw_hash, user_id))
            t.execute(q_tokens, (user_id,))

        return self._run(txn)
