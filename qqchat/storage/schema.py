"""The schema at start: numbered migrations, each applied once, in order, and recorded
in the database (``schema_version``), so an operator upgrades by installing the new
version and restarting.

Migration 1, the baseline, brings any earlier database to the schema as it stood
when versions began to be recorded. ``CREATE TABLE IF NOT EXISTS`` never alters a
table that exists, so it converts the columns whose type has changed since the
first release, adds the columns added since (filled from the rows they describe),
and then runs the dialect's schema file, which adds the missing tables and
indexes. Later migrations are the numbered files in ``db/<dialect>/``, or Python
steps where SQL cannot say it. A database recorded at a version this code does not
know was upgraded by a newer one, and is refused: this code cannot know its schema.

Several daemons may start at once on one MariaDB: a run holds a lock named after the
database (``GET_LOCK``) from reading the version to committing the last row, and
every step can be run again, since MariaDB commits each DDL statement on its own and
a run cut short resumes where its recorded version says. On SQLite a run is one
``BEGIN IMMEDIATE`` transaction: all of it, or none.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from twisted.logger import Logger

from qqchat.db import migration_files, schema_statements
from qqchat.errors import StartupError
from qqchat.names import fold
from qqchat.storage.engines import Engine, create_engine
from qqchat.storage.engines.base import conversation_statements
from qqchat.storage.engines.mysql import LOCK_NAME, LOCK_WAIT, SchemaLockError

__all__ = ["LOCK_NAME", "LOCK_WAIT", "SchemaLockError", "SchemaTooNewError", "apply_schema",
           "latest", "migrations", "schema_version"]

_log = Logger()

#: (table, column, its definition per engine) added after the first schema
_ADDED_COLUMNS = [
    ("users", "name_key", {"sqlite": "TEXT NOT NULL DEFAULT ''",
                           "mysql": "VARBINARY(512) NOT NULL DEFAULT ''"}),
    ("users", "is_admin", {"sqlite": "INTEGER NOT NULL DEFAULT 0",
                           "mysql": "TINYINT NOT NULL DEFAULT 0"}),
    ("users", "disabled", {"sqlite": "INTEGER NOT NULL DEFAULT 0",
                           "mysql": "TINYINT NOT NULL DEFAULT 0"}),
    ("users", "disabled_at", {"sqlite": "INTEGER NOT NULL DEFAULT 0",
                              "mysql": "BIGINT NOT NULL DEFAULT 0"}),
    ("users", "last_login", {"sqlite": "INTEGER NOT NULL DEFAULT 0",
                             "mysql": "BIGINT NOT NULL DEFAULT 0"}),
    ("chat_groups", "name_key", {"sqlite": "TEXT NOT NULL DEFAULT ''",
                                 "mysql": "VARBINARY(1024) NOT NULL DEFAULT ''"}),
    ("chat_groups", "last_id", {"sqlite": "INTEGER NOT NULL DEFAULT 0",
                                "mysql": "BIGINT NOT NULL DEFAULT 0"}),
]

#: columns whose type changed after the first schema, per engine: (table, column, the
#: DATA_TYPE and length it must have, its definition)
_CONVERTED_COLUMNS: dict[str, list[tuple[str, str, str, int, str]]] = {
    # 217674d: binary, so client ids compare byte for byte. The first schema's
    # VARCHAR(64) under utf8mb4_bin (a PAD SPACE collation) made "x" and "x " one
    # key: a send differing from a stored cid by trailing spaces failed its whole
    # commit batch with a duplicate-key error.
    "mysql": [("messages", "cid", "varbinary", 256, "VARBINARY(256) NULL")],
}

#: (table, index) of earlier schemas that the baseline replaced: d6151a6's
#: users_by_key (name_key, id) by the unique users_name_key (182bb0c)
_STALE_INDEXES = [("users", "users_by_key")]

_VERSION_TABLE = {
    "sqlite": "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
              " name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    "mysql": "CREATE TABLE IF NOT EXISTS schema_version (version INT NOT NULL PRIMARY KEY,"
             " name VARCHAR(200) NOT NULL, applied_at BIGINT NOT NULL) ENGINE=InnoDB",
}




class SchemaTooNewError(StartupError):
    """The database was upgraded by a newer qqchat; this one does not know its schema."""

    def __init__(self, found: int, found_name: str, known: Migration) -> None:
        super().__init__(
            f"the database schema is at version {found} ({found:04d}_{found_name}), newer "
            f"than this qqchat knows (version {known.version}, {known.label}): a newer "
            "qqchat upgraded it. Run that version or a later one; this one will not use "
            "the database (a schema is never downgraded)")
        self.found = found
        self.known = known.version


Step = Callable[[Any, str, list[str]], None]


@dataclass(frozen=True)
class Migration:
    """One numbered schema change: its statements, or a Python step that is given them."""

    version: int
    name: str
    statements: tuple[str, ...]
    step: Step | None = None

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    def run(self, t: Any, dialect: str) -> None:
        if self.step is not None:
            self.step(t, dialect, list(self.statements))
            return
        for stmt in self.statements:
            t.execute(stmt)


@cache
def migrations(dialect: str) -> tuple[Migration, ...]:
    """Every migration of ``dialect``, numbered 1, 2, ... without a gap."""
    found = [Migration(1, "baseline", tuple(schema_statements(dialect)), _baseline)]
    for number, name, statements in migration_files(dialect):
        found.append(Migration(number, name, tuple(statements), _STEPS.get(number)))
    numbers = [m.version for m in found]
    if numbers != list(range(1, len(found) + 1)):
        raise ValueError(f"migrations of {dialect} are numbered {numbers}: 1, 2, ... expected")
    return tuple(found)


def latest(dialect: str) -> Migration:
    return migrations(dialect)[-1]


@cache
def _engine(dialect: str) -> Engine:
    """The engine whose schema work (on a cursor handed in) a migration does."""
    return create_engine(dialect, None)


def schema_version(t: Any, dialect: str) -> tuple[int, str]:
    """The version recorded in the database and its name; (0, "") before any."""
    if not _engine(dialect).table_exists(t, "schema_version"):
        return 0, ""
    t.execute("SELECT version, name FROM schema_version ORDER BY version DESC LIMIT 1")
    row = t.fetchone()
    return (0, "") if row is None else (int(row[0]), _text(row[1]))


def apply_schema(t: Any, dialect: str) -> list[Migration]:
    """Apply what the database lacks, in order; return what was applied. Run inside
    one interaction at start (and by ``qqchat-admin``); refuses a newer database.
    One run at a time per database (``Engine.schema_lock``)."""
    engine = _engine(dialect)
    known = migrations(dialect)
    applied: list[Migration] = []
    with engine.schema_lock(t):
        t.execute(_VERSION_TABLE[dialect])
        found, found_name = schema_version(t, dialect)
        if found > known[-1].version:
            raise SchemaTooNewError(found, found_name, known[-1])
        q_record = engine.sql("INSERT INTO schema_version (version, name, applied_at)"
                              " VALUES (?, ?, ?)")
        for m in known[found:]:
            _log.info("schema: applying migration {label}", label=m.label)
            m.run(t, dialect)
            t.execute(q_record, (m.version, m.name, int(time.time() * 1000)))
            applied.append(m)
        engine.after_migrations(t, len(applied))
    return applied


def _baseline(t: Any, dialect: str, statements: list[str]) -> None:
    """Migration 1: any earlier database (or none) to the baseline schema. Each step
    looks at what is there, so a run cut short can run again."""
    engine = _engine(dialect)
    exists = engine.table_exists
    had_log = exists(t, "messages")
    had_conversations = exists(t, "conversations")
    _convert_columns(t, engine)
    added: set[tuple[str, str]] = set()
    for table, column, definitions in _ADDED_COLUMNS:
        if exists(t, table) and not engine.has_column(t, table, column):
            t.execute(engine.add_column(table, column, definitions[engine.name]))
            added.add((table, column))
    # before the file's indexes on them: the unique one needs every key filled (a run
    # cut short after adding the column left keys empty: fill those too)
    for table, unique in (("users", True), ("chat_groups", False)):
        if (table, "name_key") in added or (exists(t, table) and _empty_key(t, table)):
            _fill_keys(t, engine, table, unique=unique)
    for stmt in statements:
        t.execute(stmt)
    for table, index in _STALE_INDEXES:
        t.execute(engine.drop_index(table, index))
    engine.unstage(t)  # what a stop left staged, before the log is read below
    if ("chat_groups", "last_id") in added:
        t.execute("UPDATE chat_groups SET last_id = COALESCE((SELECT MAX(m.id) FROM messages m"
                  " WHERE m.kind = 2 AND m.group_id = chat_groups.id), 0)")
    if had_log and not had_conversations:
        _fill_conversations(t, engine)


def _log_positions(t: Any, dialect: str, statements: list[str]) -> None:
    """Migration 3 (MariaDB): the sequence and ``log_writers``, then the sequence moved
    past every id handed out so far (``SETVAL`` takes no expression)."""
    for stmt in statements:
        t.execute(stmt)
    if dialect == "mysql":
        engine = create_engine(dialect, None)
        engine.log_order = "positions"
        engine.sync_log_heads(t)


def _members_version(t: Any, dialect: str, statements: list[str]) -> None:
    """Migration 5: the file's column, unless a run cut short added it already (SQLite
    has no ``ADD COLUMN IF NOT EXISTS``)."""
    if not create_engine(dialect, None).has_column(t, "chat_groups", "members_version"):
        for stmt in statements:
            t.execute(stmt)


#: Python steps of later migrations, by number: each runs in place of its file's
#: statements, which it is given (migration 1 is ``_baseline``)
_STEPS: dict[int, Step] = {3: _log_positions, 5: _members_version}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _convert_columns(t: Any, engine: Engine) -> None:
    for table, column, data_type, length, definition in _CONVERTED_COLUMNS.get(engine.name, []):
        found = engine.column_type(t, table, column)
        if found is None:
            continue  # no such table yet: the schema file creates it as it should be
        if found != (data_type, length):
            _log.info("schema: converting {table}.{column} from {old} to {new} (rewrites the "
                      "table)", table=table, column=column, old=f"{found[0]}({found[1]})",
                      new=definition)
            t.execute(f"ALTER TABLE {table} MODIFY COLUMN {column} {definition}")


def _empty_key(t: Any, table: str) -> bool:
    t.execute(f"SELECT 1 FROM {table} WHERE name_key = '' LIMIT 1")
    return t.fetchone() is not None


def _fill_keys(t: Any, engine: Engine, table: str, unique: bool = False,
               chunk: int = 5000) -> None:
    """Fold every existing name (in Python: SQL has no NFKC).

    Versions before R7 let "alice" and "Alice" be two accounts. Both are kept, and
    both still log in by their exact name; the oldest holds the folded key, each
    later one gets the key plus "#" and its id ("#" is never in a user name), so
    the unique index holds and nobody can register a third look-alike. Each such
    account is logged once, for the operator to sort out.
    """
    t.execute(f"SELECT id, name FROM {table} ORDER BY id")
    rows: list[tuple[str, int]] = []
    holders: dict[str, tuple[int, str]] = {}
    for rid, name in t.fetchall():
        key = fold(name)
        if unique and key in holders:
            first_id, first_name = holders[key]
            _log.warn("account {id} {name!r} looks like account {first_id} {first_name!r}; "
                      "both are kept, and a new account can take neither name",
                      id=int(rid), name=name, first_id=first_id, first_name=first_name)
            key = f"{key}#{int(rid)}"
        else:
            holders[key] = (int(rid), name)
        rows.append((key, int(rid)))
    q = engine.sql(f"UPDATE {table} SET name_key = ? WHERE id = ?")
    for i in range(0, len(rows), chunk):
        t.executemany(q, rows[i : i + chunk])


def _fill_conversations(t: Any, engine: Engine) -> None:
    """A log written before the conversation list existed: derive it once."""
    for stmt in conversation_statements(engine, "messages"):
        t.execute(stmt)
