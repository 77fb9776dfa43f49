"""``--metrics-port``: what an operator's dashboard reads from a running daemon.

In-process daemons are scraped with twisted.web's Agent while clients chat over
real sockets; one daemon runs under twistd as operators start it; two cluster
nodes show the Redis relay's lag. Every number asserted is what the test did.
"""

from __future__ import annotations

import itertools
import json
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import Running, start_daemon
from daemon_process import DaemonProcess, free_port
from mariadb_server import MariaDB
from redis_server import RedisServer
from test_unit_metrics import Exposition, parse
from twisted.internet import defer, error
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from qqchat.app import ChatDaemon, Settings, build

# Twisted's own Agent hands readBody a transport without abortConnection, and warns
pytestmark = pytest.mark.filterwarnings(
    "ignore:Using readBody with a transport:DeprecationWarning")

METRICS = "tcp:0:interface=127.0.0.1"
WAIT = 10.0
_names = itertools.count(1)


async def metrics_port(daemon: ChatDaemon) -> int:
    assert daemon.metrics is not None
    port = await daemon.metrics.listening
    return int(port.getHost().port)


async def fetch(port: int, path: str = "/metrics") -> tuple[int, Headers, str]:
    from twisted.internet import reactor

    agent = Agent(reactor)
    response = await agent.request(
        b"GET", f"http://127.0.0.1:{port}{path}".encode()).addTimeout(WAIT, reactor)
    body = await readBody(response).addTimeout(WAIT, reactor)
    return response.code, response.headers, body.decode()


async def scrape(daemon: ChatDaemon) -> Exposition:
    code, headers, body = await fetch(await metrics_port(daemon))
    assert code == 200
    assert headers.getRawHeaders(b"content-type") == [
        b"text/plain; version=0.0.4; charset=utf-8"]
    return parse(body)


def by_label(exp: Exposition, name: str) -> dict[str, float]:
    """A one-label family as {label value: sample}."""
    return {labels[0][1]: v for labels, v in exp.series(name).items()}


@pytest.mark.settings(metrics_listen=METRICS)
@pytest_twisted.ensureDeferred
async def test_dashboard_counts_what_clients_did(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    carol = await server.user("carol")
    gid = (await alice.ok("group_create", name="team"))["group"]["id"]
    await bob.ok("group_join", group=gid)
    sent = await alice.ok("chat", to=bob.user_id, text="hi bob")
    await bob.push("message", match=lambda f: f["id"] == sent["id"])
    sent = await alice.ok("group_chat", group=gid, text="hi team")
    await bob.push("message", match=lambda f: f["id"] == sent["id"])
    sent = await carol.ok("broadcast", text="hi all")
    for c in (alice, bob):
        await c.push("message", match=lambda f, i=sent["id"]: f["id"] == i)
    await bob.ok("ack", id=sent["id"])
    assert (await alice.call("chat", to=999, text="anyone?"))["code"] == "no_such_user"
    await carol.ok("logout")
    anon = await server.client()
    anon.send_raw(b'{"type": "ping"\n')
    assert (await anon.push("error"))["code"] == "bad_json"
    await anon.ok("ping")

    exp = await scrape(server.daemon)
    assert exp.value("qqchat_connections_open", edge="tcp") == 4
    assert exp.value("qqchat_connections_accepted_total", edge="tcp") == 4
    assert exp.value("qqchat_users_logged_in") == 2
    assert by_label(exp, "qqchat_requests_total") == {
        "register": 3, "login": 3, "group_create": 1, "group_join": 1, "chat": 2,
        "group_chat": 1, "broadcast": 1, "ack": 1, "logout": 1, "ping": 1}
    assert by_label(exp, "qqchat_messages_stored_total") == {
        "direct": 1, "group": 1, "broadcast": 1}
    assert by_label(exp, "qqchat_message_pushes_total") == {
        "direct": 1, "group": 1, "broadcast": 2}
    assert by_label(exp, "qqchat_errors_sent_total") == {"no_such_user": 1, "bad_json": 1}
    # three messages and bob's ack went through the log, in however many batches
    assert exp.value("qqchat_log_batch_size_sum") == 4
    batches = exp.value("qqchat_log_batch_size_count")
    assert batches >= 1 and exp.value("qqchat_log_commit_seconds_count") == batches
    assert 0 < exp.value("qqchat_log_commit_seconds_sum") < batches * 5
    assert exp.value("qqchat_log_batches_failed_total") == 0
    assert exp.value("qqchat_process_resident_memory_bytes") > 10 * 1024 * 1024
    assert exp.value("qqchat_process_open_fds") > 4
    assert "qqchat_relay_lag_seconds" not in exp.types  # a single node has no relay lag
    for name in exp.types:
        assert name.startswith("qqchat_") and exp.helps[name], name

    await bob.ok("logout")
    bob.close()
    await bob.closed
    from twisted.internet import reactor, task

    for _ in range(50):  # the server sees the close a moment after the client
        exp = await scrape(server.daemon)
        if exp.value("qqchat_connections_open", edge="tcp") == 3:
            break
        await task.deferLater(reactor, 0.05, lambda: None)
    assert exp.value("qqchat_connections_open", edge="tcp") == 3
    assert exp.value("qqchat_users_logged_in") == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.settings(metrics_listen=METRICS, rate_limit=1, rate_burst=2, max_line=1024)
@pytest_twisted.ensureDeferred
async def test_errors_the_protocol_sends_itself_are_counted(server: Running) -> None:
    from twisted.internet import reactor

    eager = await server.client()
    eager.send_raw(b'{"type":"ping"}\n' * 4)  # the burst allows two
    codes = [(await eager.push(wait=WAIT)).get("code") for _ in range(4)]
    assert sorted(codes, key=str) == [None, None, "rate_limited", "rate_limited"]
    long = await server.client()
    long.send_raw(b'{"type":"ping","pad":"' + b"x" * 2000 + b'"}\n')
    assert (await long.push("error"))["code"] == "line_too_long"
    await long.closed.addTimeout(WAIT, reactor)

    exp = await scrape(server.daemon)
    assert by_label(exp, "qqchat_errors_sent_total") == {"rate_limited": 2, "line_too_long": 1}
    assert by_label(exp, "qqchat_requests_total") == {"ping": 2}  # refused ones never ran
    assert exp.value("qqchat_connections_accepted_total", edge="tcp") == 2
    assert exp.value("qqchat_connections_open", edge="tcp") == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_only_metrics_is_served_and_stopping_closes_the_port(settings: Settings) -> None:
    daemon, _ = await start_daemon(replace(settings, metrics_listen=METRICS))
    port = await metrics_port(daemon)
    code, _, body = await fetch(port, "/")
    assert code == 404 and "/metrics" in body
    code, _, _ = await fetch(port, "/metrics/extra")
    assert code == 404
    from twisted.internet import reactor

    await defer.maybeDeferred(daemon.stopService).addTimeout(20, reactor)
    with pytest.raises(error.ConnectionRefusedError):
        await fetch(port)


@pytest.mark.logged_errors_ok
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_metrics_port_in_use_stops_the_daemon(settings: Settings) -> None:
    from twisted.internet import reactor

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = replace(settings, metrics_listen=f"tcp:{taken.getsockname()[1]}"
                                                ":interface=127.0.0.1")
        fatal: list[bool] = []
        daemon = build(busy, reactor, on_fatal=lambda: fatal.append(True))
        daemon.startService()
        assert fatal == [True]
        await defer.maybeDeferred(daemon.stopService).addTimeout(20, reactor)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_metrics_are_off_by_default(settings: Settings) -> None:
    from twisted.internet import reactor

    daemon = build(settings, reactor)
    assert daemon.metrics is None
    assert b"qqchat_connections_open" in daemon.registry.render()


# -- under twistd ------------------------------------------------------------------


def _line_exchange(port: int, lines: list[bytes]) -> list[dict[str, Any]]:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        f = sock.makefile("rwb")
        f.write(b"".join(lines))
        f.flush()
        return [json.loads(f.readline()) for _ in lines]


def test_twistd_daemon_serves_metrics(tmp_path: Path) -> None:
    mport = free_port()
    with DaemonProcess(tmp_path, args=["--metrics-port", str(mport)]) as daemon:
        proc = daemon.proc
        assert proc is not None
        replies = _line_exchange(daemon.port, [
            b'{"type":"register","name":"alice","password":"password1"}\n',
            b"not json\n",
            b'{"type":"ping"}\n'])
        assert [r["type"] for r in replies] == ["register", "error", "pong"]
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics",
                                    timeout=WAIT) as resp:
            assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            exp = parse(resp.read().decode())
        assert by_label(exp, "qqchat_requests_total") == {"register": 1, "ping": 1}
        assert by_label(exp, "qqchat_errors_sent_total") == {"bad_json": 1}
        # start() connected once to see the daemon up, then the exchange above
        assert exp.value("qqchat_connections_accepted_total", edge="tcp") == 2
        assert exp.value("qqchat_process_resident_memory_bytes") > 0
    assert proc.returncode in (0, -15)  # SIGTERM: a clean stop, metrics service included
    assert f"metrics on http://127.0.0.1:{mport}/metrics" in daemon.output()
    assert "GET /metrics" not in daemon.output()  # no access log line per scrape


# -- cluster -----------------------------------------------------------------------


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest_twisted.ensureDeferred
async def test_cluster_nodes_report_relay_lag(mariadb: MariaDB, redis: RedisServer) -> None:
    from twisted.internet import reactor

    name = f"qq_metrics_{next(_names)}"
    mariadb.create_database(name)
    base = Settings(listen="tcp:0:interface=127.0.0.1", db=mariadb.url(name), hash_cost=4,
                    redis=redis.url, metrics_listen=METRICS, rate_limit=0)
    nodes: list[tuple[ChatDaemon, int]] = []
    clients = []
    try:
        for n in range(2):
            daemon, port = await start_daemon(replace(base, node_id=f"m{n}"))
            nodes.append((daemon, port))
            await daemon.relay.connected.addTimeout(WAIT, reactor)  # type: ignore[attr-defined]
        from chatclient import connect

        for n, who in enumerate(("alice", "bob")):
            c = await connect(nodes[n][1])
            clients.append(c)
            await c.ok("register", name=who, password="password1")
            await c.login(who, "password1")
        alice, bob = clients
        sent = await alice.ok("chat", to=bob.user_id, text="across nodes")
        await bob.push("message", match=lambda f: f["id"] == sent["id"])

        sender, receiver = await scrape(nodes[0][0]), await scrape(nodes[1][0])
        assert by_label(sender, "qqchat_messages_stored_total")["direct"] == 1
        assert by_label(sender, "qqchat_message_pushes_total")["direct"] == 0
        assert by_label(receiver, "qqchat_message_pushes_total")["direct"] == 1
        assert receiver.value("qqchat_relay_lag_seconds_count") == 1
        # one machine, one clock: the trip through Redis takes well under 5 s
        assert receiver.value("qqchat_relay_lag_seconds_bucket", le="5") == 1
        assert sender.value("qqchat_relay_lag_seconds_count") == 0
        for exp in (sender, receiver):
            assert exp.value("qqchat_relay_unsent") == 0
            assert exp.value("qqchat_users_logged_in") == 1
    finally:
        for c in clients:
            c.close()
        for daemon, _ in nodes:
            await defer.maybeDeferred(daemon.stopService).addTimeout(20, reactor)
        mariadb.drop_database(name)
