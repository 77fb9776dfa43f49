"""A database that is not there when the daemon starts: wait for it (``--db-wait``), or
exit non-zero with a message that says what is wrong."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from chatclient import connect
from daemon_process import free_port
from mariadb_server import MariaDB
from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.protocols.portforward import ProxyFactory

from qqchat.app import Settings, build

BIN = Path(sys.executable).parent


def test_unreachable_database_exits_non_zero_with_a_reason(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens here
    started = time.monotonic()
    run = subprocess.run(
        [str(BIN / "twistd"), "-n", "--pidfile=", "qqchat", "--port", str(free_port()),
         "--db", f"mysql://qq:secret@127.0.0.1:{dead}/qq", "--db-wait", "3"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert 3 <= elapsed < 30, out
    assert "not reachable yet" in out and "retrying" in out, out
    assert f"could not start: database mysql://qq@127.0.0.1:{dead}/qq unreachable for 3 s" \
        in out, out
    assert "Traceback" not in out, out


@pytest_twisted.ensureDeferred
async def test_daemon_waits_for_a_database_that_comes_up_late(mariadb: MariaDB) -> None:
    from twisted.internet import reactor

    mariadb.create_database("qq_late")
    port = free_port()
    # the database's address is a forwarder that starts listening only once the
    # daemon has found nothing there and said it will retry
    url = mariadb.url("qq_late").replace(f":{mariadb.port}/", f":{port}/")
    settings = Settings(listen="tcp:0:interface=127.0.0.1", db=url, hash_cost=4, db_wait=60)
    failed: defer.Deferred[None] = defer.Deferred()

    def observe(event: dict[str, Any]) -> None:
        if str(event.get("log_format", "")).startswith("database {db} not reachable yet") \
                and not failed.called:
            failed.callback(None)

    globalLogPublisher.addObserver(observe)
    daemon = build(settings, reactor)
    daemon.startService()
    forwarder = None
    try:
        await failed.addTimeout(20, reactor)
        assert not daemon.listener.listening.called  # no clients before the database
        forwarder = reactor.listenTCP(port, ProxyFactory("127.0.0.1", mariadb.port),
                                      interface="127.0.0.1")
        listening = await daemon.listener.listening.addTimeout(20, reactor)
        client = await connect(listening.getHost().port)
        await client.ok("register", name="late", password="password1")
        await client.login("late", "password1")
        client.close()
        await client.closed
    finally:
        globalLogPublisher.removeObserver(observe)
        await defer.maybeDeferred(daemon.stopService).addTimeout(20, reactor)
        if forwarder is not None:
            await forwarder.stopListening()
        mariadb.drop_database("qq_late")
