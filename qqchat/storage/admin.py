"""The SQL of ``qqchat-admin``: plain DB-API, synchronous, one short transaction per
change.

The admin command runs beside the daemons, not inside one, so it has no reactor
and no pool: it opens one connection, applies the schema (an older or empty
database then has every column it touches), does its work and exits. Daemons
see its changes in the shared database: a disabled account is found by their
sweep of ``disabled_at`` (services/moderation.py), and the other flags are read
at the next login.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from qqchat.names import fold
from qqchat.storage import engines
from qqchat.storage.engines import ConnectError, Engine
from qqchat.storage.pool import DatabaseConfig
from qqchat.storage.schema import apply_schema

_COLUMNS = "id, name, created_at, last_login, is_admin, disabled, disabled_at"


class DatabaseUnavailableError(Exception):
    """The database cannot be opened or stopped answering; the message says which."""


class NoSuchDatabaseError(DatabaseUnavailableError, engines.NoSuchDatabaseError):
    """An SQLite file that does not exist: opening it would create an empty one."""


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    created_at: int  # ms
    last_login: int  # ms; 0: never logged in
    is_admin: bool
    disabled: bool
    disabled_at: int  # ms of the last disable; 0: never

    def label(self) -> str:
        return f"{self.name} ({self.id})"


def _account(row: Any) -> Account:
    uid, name, created, last, admin, disabled, disabled_at = row
    return Account(int(uid), name, int(created), int(last), bool(admin), bool(disabled),
                   int(disabled_at))


class AdminStore:
    """One connection and its engine; ``?`` placeholders, translated by the engine."""

    def __init__(self, conn: Any, engine: Engine) -> None:
        self.conn = conn
        self.engine = engine
        self.dialect = engine.name
        self._integrity_error = engine.integrity_error
        #: errors that mean "the database is away", not "this request is wrong"
        self.unavailable_errors: tuple[type[BaseException], ...] = (
            engine.dbapi.OperationalError, engine.dbapi.InterfaceError)
        self._q = engine.sql

    @contextmanager
    def _txn(self) -> Iterator[Any]:
        """A cursor in one transaction: committed on success, rolled back on error."""
        cursor = self.conn.cursor()
        try:
            yield cursor
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise
        finally:
            cursor.close()

    def close(self) -> None:
        self.conn.close()

    def migrate(self) -> None:
        """Bring the schema up to this version's, as a daemon does at start."""
        with self._txn() as t:
            apply_schema(t, self.dialect)

    # -- reads ------------------------------------------------------------

    def find(self, ref: str) -> Account | None:
        """An all-digits ``ref`` is an id; otherwise a name, exact first, then by its
        folded form, as the daemon's login looks names up (store.user_by_name)."""
        with self._txn() as t:
            if ref.isascii() and ref.isdigit():
                t.execute(self._q(f"SELECT {_COLUMNS} FROM users WHERE id = ?"), (int(ref),))
                row = t.fetchone()
            else:
                t.execute(self._q(f"SELECT {_COLUMNS} FROM users WHERE name = ?"), (ref,))
                row = t.fetchone()
                if row is None:
                    t.execute(self._q(f"SELECT {_COLUMNS} FROM users WHERE name_key = ?"),
                              (fold(ref),))
                    row = t.fetchone()
        return None if row is None else _account(row)

    def accounts(self, limit: int, after: int = 0, offset: int = 0) -> list[Account]:
        """Up to ``limit`` accounts in id order: those past id ``after`` (a cursor that
        stays right while accounts are added), or past the first ``offset``."""
        with self._txn() as t:
            t.execute(self._q(f"SELECT {_COLUMNS} FROM users WHERE id > ? ORDER BY id"
                              " LIMIT ? OFFSET ?"), (after, limit, offset))
            return [_account(r) for r in t.fetchall()]

    # -- changes ----------------------------------------------------------

    def create(self, name: str, pw_hash: str, now: int, admin: bool = False) -> int | None:
        """Insert an account as registration does (store.create_user): it starts past the
        log head, so broadcasts sent before it existed are not its backlog. None if the
        name, or a name that folds to the same key, is taken."""
        with self._txn() as t:
            t.execute("SELECT last_id FROM log_seq WHERE id = 1")
            row = t.fetchone()
            head = int(row[0]) if row else 0
            try:
                t.execute(self._q("INSERT INTO users (name, pw_hash, created_at, acked, "
                                  "name_key, is_admin) VALUES (?, ?, ?, ?, ?, ?)"),
                          (name, pw_hash, now, head, fold(name), int(admin)))
            except self._integrity_error:
                return None
            return int(t.lastrowid)

    def set_disabled(self, uid: int, disabled: bool, now: int) -> None:
        """Disabling stamps ``disabled_at``: every daemon's sweep looks for recent stamps
        and ends that user's session within seconds. Enabling leaves the stamp."""
        with self._txn() as t:
            if disabled:
                t.execute(self._q("UPDATE users SET disabled = 1, disabled_at = ? WHERE id = ?"),
                          (now, uid))
            else:
                t.execute(self._q("UPDATE users SET disabled = 0 WHERE id = ?"), (uid,))

    def set_password(self, uid: int, pw_hash: str) -> int:
        """New hash and every session token revoked, in one transaction (as the daemon's
        password change does); returns how many tokens were revoked."""
        with self._txn() as t:
            t.execute(self._q("UPDATE users SET pw_hash = ? WHERE id = ?"), (pw_hash, uid))
            t.execute(self._q("DELETE FROM session_tokens WHERE user_id = ?"), (uid,))
            return max(int(t.rowcount), 0)

    def set_admin(self, uid: int, admin: bool) -> None:
        with self._txn() as t:
            t.execute(self._q("UPDATE users SET is_admin = ? WHERE id = ?"), (int(admin), uid))


def open_store(config: DatabaseConfig, create: bool = False) -> AdminStore:
    """Connect and apply the schema. An SQLite file is created only with ``create``
    (``migrate``): a mistyped path must not quietly become an empty database."""
    engine = config.engine
    try:
        conn = engine.connect(config, create, lock_wait_ms=5000, timeouts=True)
    except engines.NoSuchDatabaseError as e:
        raise NoSuchDatabaseError(f"{e} (a daemon creates it at its first start, or run: "
                                  "qqchat-admin migrate)") from None
    except ConnectError as e:
        raise DatabaseUnavailableError(str(e)) from None
    store = AdminStore(conn, engine(engine.driver()))
    try:
        store.migrate()
    except store.unavailable_errors as e:
        store.close()
        raise DatabaseUnavailableError(f"database {config.describe()} unavailable: {e}") from None
    except BaseException:
        store.close()
        raise
    return store
