"""What an engine is: everything in which SQLite and MySQL differ, and nothing else.

The domain stores (accounts, social, groups, the message log, ...) write their SQL
once, with ``?`` placeholders, and ask their engine wherever the two databases
differ: parameter style, locking reads, reserving log ids, several statements in
one round trip, the SQLite staging table that must be emptied before a log read,
and which errors mean "unavailable" or "rolled back by a lock conflict". No code
outside ``storage/engines/`` tests which database it runs on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.enterprise import adbapi
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from qqchat.storage.pool import DatabaseConfig

#: rows of one result set
Rows = list[tuple[Any, ...]]


class DatabaseURLError(ValueError):
    """The --db value cannot be used; the message says why and what to do."""


class ConnectError(Exception):
    """A plain connection (``qqchat-admin``) could not be opened; the message says why."""


class NoSuchDatabaseError(ConnectError):
    """An SQLite file that does not exist: opening it would create an empty one."""


LOG_COLUMNS = "id, kind, sender, recipient, group_id, body, ts, cid"


def conversation_statements(engine: type[Engine] | Engine, src: str) -> list[str]:
    """The one-to-one conversations of the messages in ``src``, both sides, upserted
    into the conversation list (each pair's newest message)."""
    upsert = engine.keep_greatest("user_id, peer_id", "last_id", "conversations")
    sql = ("INSERT INTO conversations (user_id, peer_id, last_id)"
           " SELECT {a}, {b}, MAX(id) FROM {src} WHERE kind = 1 GROUP BY {a}, {b}" + upsert)
    return [sql.format(a="sender", b="recipient", src=src),
            sql.format(a="recipient", b="sender", src=src)]


class _NeverError(Exception):
    """Stands for the errors of a DB-API module the engine was not given."""


class Engine:
    """One database engine. A class attribute or method per difference; an instance
    holds the DB-API module of its pool (its error classes) and the statements it has
    translated."""

    #: the ``--db`` scheme's dialect; names the schema files (``db/<name>.sql``)
    name: ClassVar[str]
    #: the DB-API placeholder
    param: ClassVar[str] = "?"
    #: appended to a SELECT that must lock the rows it reads until commit
    for_update: ClassVar[str] = ""
    #: appended to a SELECT whose rows no other transaction may change until commit
    share_lock: ClassVar[str] = ""
    #: the SQL function of the larger of two values
    greatest: ClassVar[str] = "MAX"
    #: new messages go to ``messages_recent`` and move to ``messages`` in bulk
    stages_log: ClassVar[bool] = False
    #: several statements can go to the server as one (one round trip)
    multi_statements: ClassVar[bool] = False
    #: an SQL expression for the log head ``reserve_ids`` set, valid in the later
    #: statements of one multi-statement; None where there is no multi-statement
    reserved_head: ClassVar[str | None] = None
    #: ``reserve_ids`` as one statement of a multi-statement (where ``reserved_head``)
    reserve_sql: ClassVar[str] = ""
    #: the server may not be up yet at start (both started at boot): wait for it
    waits_for_server: ClassVar[bool] = False
    #: error codes of a transaction rolled back only for the order in which
    #: transactions took locks: running it again usually gets through
    lock_conflicts: ClassVar[frozenset[int]] = frozenset()
    #: the engine can take log ids without a lock held to commit (``next_ids``), so
    #: ``--log-order positions`` can run on it
    has_log_positions: ClassVar[bool] = False

    def __init__(self, dbapi: Any = None) -> None:
        """``dbapi``: the DB-API module of the pool or connection, whose errors the
        engine sorts; None for work on a cursor that needs none (the schema)."""
        self.dbapi = dbapi
        self.integrity_error: type[BaseException] = (
            dbapi.IntegrityError if dbapi is not None else _NeverError)
        #: errors that mean "the database is away", not "this request is wrong"
        self.unavailable_errors: tuple[type[BaseException], ...] = (
            (dbapi.OperationalError, dbapi.InterfaceError, adbapi.ConnectionLost)
            if dbapi is not None else ())
        self._sql_cache: dict[str, str] = {}
        #: how batches take log ids: "lock" (``reserve_ids``, the ``log_seq`` row lock
        #: held to commit: ids commit in id order) or "positions" (``next_ids``, no
        #: lock: storage/positions.py says what keeps acks safe); set by ``app.build``
        self.log_order = "lock"

    # -- statements -------------------------------------------------------

    def sql(self, sql: str) -> str:
        """``sql`` (written with ``?``) in this engine's parameter style; once per
        statement text, so keep dynamic statements out of it."""
        return sql

    @classmethod
    def keep_greatest(cls, keys: str, column: str, table: str) -> str:
        """The clause that makes an INSERT into ``table`` whose unique ``keys`` exist
        keep the greater ``column``: an upsert that never moves a value back."""
        raise NotImplementedError

    def lock_rows(self, t: Any, sql: str, params: Sequence[Any]) -> None:
        """Lock the rows a SELECT (without its locking clause) reads, to serialise
        writers that would otherwise both pass a check; nothing where writes are
        serial already."""

    def reserve_ids(self, t: Any, n: int) -> int:
        """Move the log head (``log_seq``) ``n`` ids on, holding its row lock to
        commit; the new head."""
        raise NotImplementedError

    def next_ids(self, t: Any, n: int) -> list[int]:
        """``n`` new log ids, increasing, from a source that holds no lock to commit
        (``--log-order positions``); ids taken and not used are gaps, never reused.
        Only where ``has_log_positions``."""
        raise NotImplementedError(f"{self.name} has no lock-free log ids")

    def sequence_head(self, t: Any) -> int:
        """A value every id handed out so far is at most, and every id handed out
        later is greater than (where ``has_log_positions``)."""
        raise NotImplementedError(f"{self.name} has no lock-free log ids")

    def sync_log_heads(self, t: Any) -> None:
        """At start, after the migrations: move the id source of ``log_order`` past
        every stored id (the other order may have written last), so that a cluster
        switched between orders never hands out an id twice."""

    def execute_each(self, t: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per row of parameters, in as few round trips as
        the engine allows."""
        t.executemany(sql, rows)

    def result_sets(self, t: Any, statements: Sequence[tuple[str, Sequence[Any]]]
                    ) -> list[Rows]:
        """Run statements in order; the rows of each that returns rows. One round trip
        where the engine takes multi-statements."""
        out: list[Rows] = []
        for sql, params in statements:
            t.execute(sql, params)
            if t.description is not None:
                out.append(list(t.fetchall()))
        return out

    def run_script(self, t: Any, statements: Sequence[str], params: Sequence[Any]
                   ) -> list[Rows]:
        """Several statements (``params``: theirs, in order) as one multi-statement,
        one round trip; the rows of each that returns rows. Only where
        ``multi_statements``."""
        raise NotImplementedError(f"{self.name} has no multi-statements")

    # -- the message log --------------------------------------------------

    #: where new messages are inserted
    log_table: ClassVar[str] = "messages"

    def before_log_read(self, t: Any) -> None:
        """Called in a transaction before it reads the message log: afterwards
        ``messages`` holds the whole log."""

    def after_log_insert(self, t: Any, next_id: int) -> None:
        """Called after a batch's rows are inserted (``next_id``: the id after the
        last): where the engine stages rows, it moves them once enough wait."""

    def unstage(self, t: Any) -> None:
        """Move whatever is staged into ``messages`` (at start: what a stop left)."""

    # -- commits ----------------------------------------------------------

    @contextmanager
    def unsynced(self, t: Any) -> Iterator[None]:
        """Wrap a whole transaction that only stamps when something last happened (a
        login, a session token's use): where the engine can, its commit does not wait
        for the disk, since nothing has to outlive a power loss for it. Here an
        ordinary commit (MariaDB's durability is the server's, for every session)."""
        yield

    @property
    def derives_later(self) -> bool:
        """The conversation list is not written by each batch but caught up in bulk
        (``LogStore.derive_conversations``), which its readers wait for first. False
        here: the batches write it, or (``stages_log``) the move of staged rows does."""
        return False

    # -- errors -----------------------------------------------------------

    def lock_conflict(self, failure: Failure) -> int | None:
        """The error code if ``failure`` is a rollback for a lock conflict."""
        if (not self.lock_conflicts or self.dbapi is None
                or not failure.check(self.dbapi.DatabaseError)):
            return None
        args = failure.value.args
        code = args[0] if args else None
        return code if code in self.lock_conflicts else None

    # -- schema -----------------------------------------------------------

    def table_exists(self, t: Any, table: str) -> bool:
        raise NotImplementedError

    def has_column(self, t: Any, table: str, column: str) -> bool:
        raise NotImplementedError

    def column_type(self, t: Any, table: str, column: str) -> tuple[str, int] | None:
        """(data type, length) of a column; None if there is no such column. Only the
        engines whose column types changed need it."""
        raise NotImplementedError

    def add_column(self, table: str, column: str, definition: str) -> str:
        """The ALTER TABLE that adds a column, safe to run again where the engine lets it."""
        return f"ALTER TABLE {table} ADD COLUMN {column} {definition}"

    def drop_index(self, table: str, index: str) -> str:
        return f"DROP INDEX IF EXISTS {index}"

    @contextmanager
    def schema_lock(self, t: Any) -> Iterator[None]:
        """One migration run at a time per database."""
        raise NotImplementedError
        yield

    def after_migrations(self, t: Any, applied: int) -> None:
        """The end of a migration run, ``applied`` migrations later, before its lock goes."""

    # -- connections ------------------------------------------------------

    @classmethod
    def describe(cls, config: DatabaseConfig) -> str:
        """The database, in a form safe to log: never the password."""
        raise NotImplementedError

    @classmethod
    def check_driver(cls) -> None:
        """Fail early, with the install hint, when the driver is missing."""

    @classmethod
    def driver(cls) -> Any:
        """The DB-API module of ``connect``'s connections."""
        raise NotImplementedError

    @classmethod
    def make_pool(cls, config: DatabaseConfig, reactor: Any) -> adbapi.ConnectionPool:
        """Build (not start) the daemon's pool; adbapi starts it when the reactor runs."""
        raise NotImplementedError

    @classmethod
    def connect(cls, config: DatabaseConfig, create: bool, lock_wait_ms: int,
                timeouts: bool) -> Any:
        """A plain DB-API connection for a command that runs beside the daemons.
        ``create``: an SQLite file may be made; ``lock_wait_ms``: how long to wait
        for another writer (SQLite); ``timeouts``: give up on a server that stops
        answering (no: a migration may run long). Raises ``ConnectError``."""
        raise NotImplementedError
