"""The schema at start: the dialect's SQL file, plus the steps that bring an older
database up to it (columns added since, and the tables derived from the log).

``CREATE TABLE IF NOT EXISTS`` never alters a table that exists, so each column
added after the first release is added here, before the file runs (the file's
indexes name it), and filled from the rows it describes. Every step is idempotent
and safe when several daemons start at once on one MariaDB.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from qqchat.db import schema_statements
from qqchat.names import fold

_log = Logger()
_LOG_COLUMNS = "id, kind, sender, recipient, group_id, body, ts, cid"

#: (table, column, SQLite type, MySQL type) added after the first schema
_ADDED_COLUMNS = [
    ("users", "name_key", "TEXT NOT NULL DEFAULT ''", "VARBINARY(512) NOT NULL DEFAULT ''"),
    ("users", "is_admin", "INTEGER NOT NULL DEFAULT 0", "TINYINT NOT NULL DEFAULT 0"),
    ("users", "disabled", "INTEGER NOT NULL DEFAULT 0", "TINYINT NOT NULL DEFAULT 0"),
    ("users", "disabled_at", "INTEGER NOT NULL DEFAULT 0", "BIGINT NOT NULL DEFAULT 0"),
    ("users", "last_login", "INTEGER NOT NULL DEFAULT 0", "BIGINT NOT NULL DEFAULT 0"),
    ("chat_groups", "name_key", "TEXT NOT NULL DEFAULT ''",
     "VARBINARY(1024) NOT NULL DEFAULT ''"),
    ("chat_groups", "last_id", "INTEGER NOT NULL DEFAULT 0", "BIGINT NOT NULL DEFAULT 0"),
]


def apply_schema(t: Any, dialect: str) -> None:
    """Run inside one interaction at start."""
    mysql = dialect == "mysql"
    exists = _table_exists_mysql if mysql else _table_exists_sqlite
    had_log = exists(t, "messages")
    had_conversations = exists(t, "conversations")
    added: set[tuple[str, str]] = set()
    for table, column, sqlite_type, mysql_type in _ADDED_COLUMNS:
        if exists(t, table) and not _has_column(t, mysql, table, column):
            t.execute(f"ALTER TABLE {table} ADD COLUMN "
                      + (f"IF NOT EXISTS {column} {mysql_type}" if mysql
                         else f"{column} {sqlite_type}"))
            added.add((table, column))
    # before the file's indexes on them: the unique one needs every key filled
    if ("users", "name_key") in added:
        _fill_keys(t, mysql, "users", unique=True)
    if ("chat_groups", "name_key") in added:
        _fill_keys(t, mysql, "chat_groups")
    for stmt in schema_statements(dialect):
        t.execute(stmt)
    if not mysql:
        move_staged(t)  # what a stop left staged, before anything reads the log
    if ("chat_groups", "last_id") in added:
        t.execute("UPDATE chat_groups SET last_id = COALESCE((SELECT MAX(m.id) FROM messages m"
                  " WHERE m.kind = 2 AND m.group_id = chat_groups.id), 0)")
    if had_log and not had_conversations:
        _fill_conversations(t, mysql)


def _table_exists_sqlite(t: Any, table: str) -> bool:
    t.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
    return t.fetchone() is not None


def _table_exists_mysql(t: Any, table: str) -> bool:
    t.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE()"
              " AND table_name = %s", (table,))
    return t.fetchone() is not None


def _has_column(t: Any, mysql: bool, table: str, column: str) -> bool:
    if mysql:
        t.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = DATABASE()"
                  " AND table_name = %s AND column_name = %s", (table, column))
        return t.fetchone() is not None
    t.execute(f"PRAGMA table_info({table})")
    return any(row[1] == column for row in t.fetchall())


def _fill_keys(t: Any, mysql: bool, table: str, unique: bool = False,
               chunk: int = 5000) -> None:
    """Fold every existing name (in Python: SQL has no NFKC).

    Versions before R7 let "alice" and "Alice" be two accounts. Both are kept, and
    both still log in by their exact name; the oldest holds the folded key, each
    later one gets the key plus "#" and its id ("#" is never in a user name), so
    the unique index holds and nobody can register a third look-alike. Each such
    account is logged once, for the operator to sort out.
    """
    p = "%s" if mysql else "?"
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
    for i in range(0, len(rows), chunk):
        t.executemany(f"UPDATE {table} SET name_key = {p} WHERE id = {p}", rows[i : i + chunk])


#: one-to-one conversations of a set of messages, both sides; {src} is the table read
_CONVERSATIONS_SQLITE = (
    "INSERT INTO conversations (user_id, peer_id, last_id)"
    " SELECT {a}, {b}, MAX(id) FROM {src} WHERE kind = 1 GROUP BY {a}, {b}"
    " ON CONFLICT (user_id, peer_id) DO UPDATE SET last_id = max(last_id, excluded.last_id)")
_CONVERSATIONS_MYSQL = (
    "INSERT INTO conversations (user_id, peer_id, last_id)"
    " SELECT {a}, {b}, MAX(id) FROM {src} WHERE kind = 1 GROUP BY {a}, {b}"
    " ON DUPLICATE KEY UPDATE last_id = GREATEST(conversations.last_id, VALUES(last_id))")


def _conversation_statements(mysql: bool, src: str) -> list[str]:
    sql = _CONVERSATIONS_MYSQL if mysql else _CONVERSATIONS_SQLITE
    return [sql.format(a="sender", b="recipient", src=src),
            sql.format(a="recipient", b="sender", src=src)]


def _fill_conversations(t: Any, mysql: bool) -> None:
    """A log written before the conversation list existed: derive it once."""
    for stmt in _conversation_statements(mysql, "messages"):
        t.execute(stmt)


_MOVE_STAGED: list[str] = [
    *_conversation_statements(False, "messages_recent"),
    "UPDATE chat_groups SET last_id = (SELECT MAX(r.id) FROM messages_recent r"
    " WHERE r.kind = 2 AND r.group_id = chat_groups.id)"
    " WHERE id IN (SELECT group_id FROM messages_recent WHERE kind = 2)",
    f"INSERT INTO messages ({_LOG_COLUMNS}) SELECT {_LOG_COLUMNS} FROM messages_recent",
    "DELETE FROM messages_recent",
]


def move_staged(t: Any) -> None:
    """SQLite: move staged messages into the indexed log, and update what is derived
    from it (the conversation list) in the same bulk step."""
    for stmt in _MOVE_STAGED:
        t.execute(stmt)


