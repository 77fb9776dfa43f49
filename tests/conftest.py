"""Fixtures: a real daemon in-process on a loopback port, on SQLite and on MariaDB.

The reactor is imported inside functions only, so pytest-twisted can install
the one chosen with --reactor before anything touches it.
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import hypothesis_profiles  # noqa: F401  (loads the Hypothesis profile before any test)
import pytest
import pytest_twisted
from chatclient import ChatClient, connect
from mariadb_server import MariaDB
from twisted.internet import defer, task
from twisted.logger import globalLogPublisher
from unit_support import Services, build_services

from qqchat.app import ChatDaemon, Settings, build
from qqchat.services.limits import Limits
from qqchat.storage.engines import create_engine
from qqchat.storage.pool import make_pool, parse_database_url
from qqchat.storage.schema import apply_schema
from qqchat.storage.stores import Stores

BACKENDS = ["sqlite", "mysql"]
_db_names = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "logged_errors_ok: the test expects logged failures")
    config.addinivalue_line("markers", "settings(**kw): Settings overrides for the daemon")


@pytest.fixture(autouse=True)
def no_logged_errors(request: pytest.FixtureRequest) -> Iterator[list[dict[str, Any]]]:
    """Fail a test whose code logged a failure, as trial would (pytest-twisted does not)."""
    seen: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    gc.collect()
    globalLogPublisher.removeObserver(observe)
    if seen and not request.node.get_closest_marker("logged_errors_ok"):
        f = seen[0].get("log_failure")
        detail = f.getTraceback() if f is not None else seen[0].get("log_format")
        pytest.fail(f"{len(seen)} logged error(s); first: {detail}")


@pytest.fixture
def clock() -> task.Clock:
    return task.Clock()


@pytest.fixture
def services(clock: task.Clock) -> Iterator[Services]:
    """Every service over a threadless SQLite store, driven by ``clock``."""
    s = build_services(clock)
    yield s
    s.close()


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    server = MariaDB()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for one test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/chat.db"
        return
    server: MariaDB = request.getfixturevalue("mariadb")
    name = f"qq_test_{next(_db_names)}"
    server.create_database(name)
    yield server.url(name)
    server.drop_database(name)


@pytest_twisted.async_yield_fixture
async def stores(db_url: str) -> AsyncIterator[Stores]:
    """Every domain store on a fresh database of each engine (``db_url``: SQLite, and
    MariaDB started as the end-to-end tests start it), on a real pool and reactor."""
    from twisted.internet import reactor

    config = parse_database_url(db_url, pool_max=4)
    pool = make_pool(config, reactor)
    await pool.runInteraction(apply_schema, config.dialect)
    yield Stores.open(pool, create_engine(config.dialect, pool.dbapi))
    pool.close()


@dataclass
class Running:
    """A daemon running in this process, and a way to open clients to it."""

    daemon: ChatDaemon
    port: int
    clients: list[ChatClient]

    async def client(self) -> ChatClient:
        c = await connect(self.port)
        self.clients.append(c)
        return c

    async def user(self, name: str, password: str = "password1") -> ChatClient:
        """A registered, logged-in client."""
        c = await self.client()
        await c.ok("register", name=name, password=password)
        await c.login(name, password)
        return c


async def start_daemon(settings: Settings) -> tuple[ChatDaemon, int]:
    from twisted.internet import reactor

    daemon = build(settings, reactor)
    daemon.startService()
    port = await daemon.listener.listening
    return daemon, port.getHost().port


@pytest.fixture
def settings(db_url: str, request: pytest.FixtureRequest) -> Settings:
    # no rate limits: the tests send and register as fast as they can (test_e2e_flow
    # and test_e2e_limits check the limits), and anyone broadcasts (test_unit_roles
    # checks roles)
    base = Settings(listen="tcp:0:interface=127.0.0.1", db=db_url, hash_cost=4,
                    rate_limit=0, limits=Limits(send_rate=0, register_rate=0),
                    broadcast_anyone=True)
    marker = request.node.get_closest_marker("settings")
    return replace(base, **marker.kwargs) if marker else base


@pytest_twisted.async_yield_fixture
async def server(settings: Settings) -> AsyncIterator[Running]:
    daemon, port = await start_daemon(settings)
    running = Running(daemon, port, [])
    yield running
    for c in running.clients:
        if c.transport is not None and c.transport.connected:
            c.close()
    from twisted.internet import reactor

    await defer.maybeDeferred(daemon.stopService).addTimeout(20, reactor)


UserFactory = Callable[[str], Awaitable[ChatClient]]
