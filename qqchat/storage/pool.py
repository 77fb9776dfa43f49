"""Database URLs, adbapi connection pools, and the service that owns the pool."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from qqchat.errors import StartupError
from qqchat.storage.engines import DatabaseURLError, Engine, create_engine, engine_class
from qqchat.storage.schema import apply_schema

__all__ = ["DatabaseConfig", "DatabaseService", "DatabaseURLError", "check_driver",
           "make_pool", "parse_database_url"]


@dataclass(frozen=True)
class DatabaseConfig:
    dialect: str  # "sqlite" or "mysql"
    path: str = ""
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = ""
    password: str = ""
    database: str = ""
    pool_min: int = 2
    pool_max: int = 10
    reconnect: bool = True
    options: dict[str, str] = field(default_factory=dict)

    @property
    def engine(self) -> type[Engine]:
        return engine_class(self.dialect)

    def describe(self) -> str:
        """A form safe to log: never the password."""
        return self.engine.describe(self)


def parse_database_url(url: str, pool_min: int = 2, pool_max: int = 10) -> DatabaseConfig:
    """Parse ``sqlite:///PATH`` or ``mysql://USER:PASS@HOST:PORT/DB[?reconnect=0]``."""
    if url.startswith("sqlite:///"):
        path = unquote(url[len("sqlite:///") :])  # sqlite:////abs/path keeps its leading /
        if not path:
            raise DatabaseURLError("sqlite URL needs a file: sqlite:///qqchat.db")
        return DatabaseConfig(dialect="sqlite", path=path)
    parts = urlsplit(url)
    if parts.scheme in ("mysql", "mariadb"):
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        database = parts.path.lstrip("/")
        if not database:
            raise DatabaseURLError("mysql URL needs a database: mysql://USER:PASS@HOST:PORT/DB")
        if pool_min < 1 or pool_max < pool_min:
            raise DatabaseURLError("pool sizes need 1 <= min <= max")
        try:
            port = parts.port or 3306
        except ValueError as e:
            raise DatabaseURLError(f"bad port in database URL: {e}") from None
        return DatabaseConfig(
            dialect="mysql",
            host=parts.hostname or "127.0.0.1",
            port=port,
            user=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            database=database,
            pool_min=int(query.pop("pool_min", pool_min)),
            pool_max=int(query.pop("pool_max", pool_max)),
            reconnect=query.pop("reconnect", "1") not in ("0", "false", "no"),
            options=query,
        )
    raise DatabaseURLError(f"unknown database scheme {parts.scheme!r}: use sqlite:/// or mysql://")


def check_driver(config: DatabaseConfig) -> None:
    """Fail early, with the install hint, when the engine's driver is missing."""
    config.engine.check_driver()


def make_pool(config: DatabaseConfig, reactor: Any) -> adbapi.ConnectionPool:
    """Build (not start) the pool; adbapi starts it when the reactor runs."""
    return config.engine.make_pool(config, reactor)


def _start_schema(t: Any, dialect: str, log_order: str) -> None:
    """The migrations, then the log's id source of this node's order moved past every
    stored id (the cluster may have run in the other order before)."""
    apply_schema(t, dialect)
    engine = create_engine(dialect, None)
    engine.log_order = log_order
    engine.sync_log_heads(t)


class DatabaseUnreachableError(StartupError):
    """The database did not answer within --db-wait at start."""


class DatabaseService(Service):
    """Owns the pool: applies the schema at start, closes the pool at stop.

    ``ready`` fires once the schema is in place; the listener waits for it so no
    client is accepted before the database works. A MySQL server that is not up
    yet (both started at boot, say) is retried for ``wait`` seconds; SQLite is not
    retried, since a file that cannot be opened will not heal by itself.
    """

    log = Logger()
    #: seconds between tries while the database is not reachable at start
    retry_every = 2.0

    def __init__(self, config: DatabaseConfig, pool: adbapi.ConnectionPool,
                 clock: IReactorTime, wait: float = 30.0, log_order: str = "lock") -> None:
        self.config = config
        #: the log's id source this node uses (``Engine.log_order``), moved past every
        #: stored id at start (``Engine.sync_log_heads``)
        self.log_order = log_order
        self.pool = pool
        self.clock = clock
        self.wait = wait if config.engine.waits_for_server else 0.0
        self.ready: defer.Deferred[None] = defer.Deferred()
        self._retry: IDelayedCall | None = None
        self._deadline = 0.0

    def startService(self) -> None:
        super().startService()
        self._deadline = self.clock.seconds() + self.wait
        self._try()

    def _try(self) -> None:
        self._retry = None
        d = self.pool.runInteraction(_start_schema, self.config.dialect, self.log_order)
        d.addCallbacks(self._ready, self._failed)
        d.addErrback(lambda f: self.log.failure("database start failed", f))

    def _ready(self, _: object) -> None:
        self.log.info("database ready: {db}", db=self.config.describe())
        self.ready.callback(None)

    def _failed(self, failure: Failure) -> None:
        if not self.running:
            return
        left = self._deadline - self.clock.seconds()
        reason = failure.getErrorMessage()
        if left <= 0 or failure.check(StartupError):  # the latter: waiting will not fix it
            if self.wait <= 0 or failure.check(StartupError):
                self.ready.errback(failure)
            else:
                self.ready.errback(DatabaseUnreachableError(
                    f"database {self.config.describe()} unreachable for {self.wait:g} s "
                    f"(--db-wait); last error: {reason}"))
            return
        self.log.warn("database {db} not reachable yet ({reason}); retrying for "
                      "{left:.0f} more seconds", db=self.config.describe(), reason=reason,
                      left=left)
        self._retry = self.clock.callLater(min(self.retry_every, left), self._try)

    def stopService(self) -> None:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self.pool.running:
            self.pool.close()
