"""``qqchat-admin migrate``: the schema migrations on a connection of the command's own.

A daemon applies the same migrations at start (``schema.apply_schema``), on its pool,
whose MySQL connections give up on a statement after 10 s. A migration that rewrites a
large table (the baseline's conversion of an old ``messages.cid``, say) can take
longer, so this connection has no read timeout: an operator runs it once, before
restarting the daemons, and it finishes however long that takes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from qqchat.storage.engines import ConnectError, NoSuchDatabaseError
from qqchat.storage.pool import DatabaseConfig
from qqchat.storage.schema import Migration, apply_schema, migrations, schema_version


class MigrationError(Exception):
    """The database cannot be opened, or stopped answering; the message says which."""


@dataclass(frozen=True)
class Applied:
    """One row of ``schema_version``."""

    version: int
    name: str
    applied_at: int  # ms

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True)
class SchemaStatus:
    """What the database records, and what this version would apply to it."""

    version: int
    history: list[Applied]
    pending: list[Migration]
    applied_now: list[Migration]

    @property
    def latest(self) -> str:
        return self.history[-1].label if self.history else "none"


@contextmanager
def _connection(config: DatabaseConfig, create: bool) -> Iterator[tuple[Any, Any]]:
    """(connection, DB-API module), closed on the way out. A daemon starting meanwhile
    may hold SQLite's write lock while it migrates: wait up to a minute for it."""
    engine = config.engine
    try:  # no read or write timeout: see the module's docstring
        conn = engine.connect(config, create, lock_wait_ms=60000, timeouts=False)
    except NoSuchDatabaseError as e:
        raise MigrationError(f"{e} (qqchat-admin migrate, or a daemon's first start, "
                             "creates it)") from None
    except ConnectError as e:
        raise MigrationError(str(e)) from None
    try:
        yield conn, engine.driver()
    finally:
        conn.close()


def _history(cursor: Any, dialect: str) -> list[Applied]:
    if schema_version(cursor, dialect)[0] == 0:
        return []
    cursor.execute("SELECT version, name, applied_at FROM schema_version ORDER BY version")
    return [Applied(int(v), n.decode() if isinstance(n, bytes) else str(n), int(at))
            for v, n, at in cursor.fetchall()]


def status(config: DatabaseConfig, apply: bool) -> SchemaStatus:
    """With ``apply``, migrate first (creating an SQLite file); the status after."""
    with _connection(config, create=apply) as (conn, dbapi):
        try:
            cursor = conn.cursor()
            applied_now: list[Migration] = []
            if apply:
                try:
                    applied_now = apply_schema(cursor, config.dialect)
                    conn.commit()
                except BaseException:
                    conn.rollback()
                    raise
            history = _history(cursor, config.dialect)
            conn.rollback()  # only read
        except (dbapi.OperationalError, dbapi.InterfaceError) as e:
            raise MigrationError(f"database {config.describe()} unavailable: {e}") from None
    version = history[-1].version if history else 0
    return SchemaStatus(version, history, list(migrations(config.dialect)[version:]),
                        applied_now)
