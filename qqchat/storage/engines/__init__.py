"""The database engines: ``SqliteEngine`` and ``MySQLEngine`` (``base.Engine`` says
what an engine answers for)."""

from __future__ import annotations

from typing import Any

from qqchat.storage.engines.base import (
    ConnectError,
    DatabaseURLError,
    Engine,
    NoSuchDatabaseError,
)
from qqchat.storage.engines.mysql import MySQLEngine
from qqchat.storage.engines.sqlite import SqliteEngine

__all__ = [
    "ConnectError",
    "DatabaseURLError",
    "Engine",
    "MySQLEngine",
    "NoSuchDatabaseError",
    "SqliteEngine",
    "create_engine",
    "engine_class",
]

_ENGINES: dict[str, type[Engine]] = {e.name: e for e in (SqliteEngine, MySQLEngine)}


def engine_class(dialect: str) -> type[Engine]:
    """The engine of a ``DatabaseConfig.dialect``."""
    try:
        return _ENGINES[dialect]
    except KeyError:
        raise DatabaseURLError(f"unknown database engine {dialect!r}") from None


def create_engine(dialect: str, dbapi: Any) -> Engine:
    """The engine for a pool (or connection) of ``dbapi``, the DB-API module."""
    return engine_class(dialect)(dbapi)
