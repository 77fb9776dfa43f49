"""Bad input (P2, R4): each error code over TCP, and a property-based protocol fuzzer.

Each bad line gets an error on the same connection, the connection stays usable
(except past the line cap), and other clients keep being served meanwhile.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from chatclient import ChatClient, connect
from conftest import Running, start_daemon
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mariadb_server import MariaDB
from twisted.internet import defer

from qqchat.app import Settings


@pytest_twisted.ensureDeferred
async def test_bad_json_and_bad_shapes_get_errors_and_the_connection_stays(server: Running
                                                                            ) -> None:
    c = await server.client()
    for raw, code in [
        (b"this is not json\n", "bad_json"),
        (b'{"type": "ping"\n', "bad_json"),
        (b"\xff\xfe garbage\n", "bad_json"),
        (b"[1, 2, 3]\n", "bad_request"),
        (b'"just a string"\n', "bad_request"),
        (b'{"req": 5}\n', "missing_field"),
        (b'{"type": 42}\n', "bad_field"),
        (b'{"type": "teleport"}\n', "unknown_type"),
        (b'{"type": "ping", "req": [1]}\n', "bad_field"),
    ]:
        c.send_raw(raw)
        frame = await c.push("error")
        assert frame["code"] == code, raw
        assert frame["message"]
    assert (await c.ok("ping"))["type"] == "pong"


@pytest_twisted.ensureDeferred
async def test_unknown_type_echoes_req(server: Running) -> None:
    c = await server.client()
    frame = await c.call("teleport", req="abc")
    assert frame == {"type": "error", "req": "abc", "code": "unknown_type",
                     "message": "unknown request type 'teleport'"}


@pytest_twisted.ensureDeferred
async def test_over_long_line_gets_an_error_then_the_connection_closes(server: Running
                                                                       ) -> None:
    c = await server.client()
    other = await server.user("alice")
    c.send_raw(b'{"type":"ping","pad":"' + b"x" * (70 * 1024) + b'"}\n')
    frame = await c.push("error")
    assert frame["code"] == "line_too_long"
    await c.closed
    assert (await other.ok("ping"))["type"] == "pong"


@pytest.mark.settings(idle_timeout=1.0)
@pytest_twisted.ensureDeferred
async def test_idle_connection_is_closed_and_its_user_goes_offline(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    await alice.ok("friend_add", to=bob.user_id)
    await bob.ok("friend_accept", **{"from": alice.user_id})
    for _ in range(3):  # bob keeps talking, alice stays silent
        await bob.silence(0.4)
        await bob.ok("ping")
    frame = await alice.push("error")
    assert frame["code"] == "idle_timeout"
    await alice.closed
    gone = await bob.push("presence")
    assert (gone["user"], gone["online"]) == (alice.user_id, False)


@pytest.fixture
def own_mariadb() -> Iterator[MariaDB]:
    """A MariaDB of this test's own, so it can be stopped without harming others."""
    server = MariaDB()
    server.start()
    server.create_database("qq_down")
    yield server
    server.stop()


@pytest.mark.logged_errors_ok
@pytest_twisted.ensureDeferred
async def test_database_gone_gives_unavailable_and_the_daemon_stays_up(
        own_mariadb: MariaDB) -> None:
    daemon, port = await start_daemon(Settings(listen="tcp:0:interface=127.0.0.1",
                                               db=own_mariadb.url("qq_down"), hash_cost=4))
    try:
        c = await connect(port)
        await c.ok("register", name="alice", password="password1")
        await c.login("alice", "password1")
        own_mariadb.stop()
        frame = await c.call("chat", to=c.user_id, text="anyone there?", wait=30)
        assert frame["code"] == "unavailable"
        frame = await c.call("register", name="bob", password="password1", wait=30)
        assert frame["code"] == "unavailable"
        assert (await c.ok("ping"))["type"] == "pong"
        c.close()
    finally:
        from twisted.internet import reactor

        await defer.maybeDeferred(daemon.stopService).addTimeout(20, reactor)


# -- the fuzzer -----------------------------------------------------------------

REQUEST_TYPES = ["register", "login", "logout", "who", "chat", "ack", "broadcast",
                 "friend_add", "friend_accept", "friend_decline", "friend_remove", "friends",
                 "group_create", "group_join", "group_leave", "group_info", "groups",
                 "group_chat", "history", "ping"]
FIELDS = ["req", "name", "password", "id", "to", "from", "text", "cid", "limit", "offset",
          "group", "with", "before", "desc"]
PUSH_TYPES = {"message", "presence", "friend_request", "friend_added", "friend_declined",
              "friend_removed", "group_joined", "group_left", "synced", "kicked"}

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=False) | st.text(max_size=40)
           | st.sampled_from([0, 1, 2, 3, -1, 2**53, 2**53 + 1, "", " ", "1"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                      max_leaves=8)
requests = st.fixed_dictionaries(
    {"type": st.sampled_from(REQUEST_TYPES) | values},
    optional={k: values for k in FIELDS},
)


def _line_ok(raw: bytes) -> bool:
    return b"\n" not in raw and b"\r" not in raw and bool(raw.strip())


lines = st.one_of(
    requests.map(lambda r: json.dumps(r).encode()),
    values.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=120).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=120),
).filter(_line_ok)


class Fuzz:
    """A fuzzing client plus two witnesses who must keep chatting throughout."""

    def __init__(self, port: int, fuzzer: ChatClient, alice: ChatClient, bob: ChatClient):
        self.port, self.fuzzer, self.alice, self.bob = port, fuzzer, alice, bob
        self.n = itertools.count()

    async def check(self, batch: list[bytes]) -> None:
        for raw in batch:
            n = next(self.n)
            before = len(self.fuzzer.frames)
            self.fuzzer.send_raw(raw + b"\n")
            pong = await self.fuzzer.call("ping", req=f"~sync-{n}", wait=15)
            assert pong["type"] == "pong"
            answers = [f for f in self.fuzzer.frames[before:-1]
                       if f.get("type") not in PUSH_TYPES]
            assert answers, f"no answer to {raw!r}"
            self.fuzzer.pushes.clear()
        text = f"still here {n}"
        await self.alice.ok("chat", to=self.bob.user_id, text=text)
        got = await self.bob.push("message", wait=15, match=lambda f: f["text"] == text)
        assert got["from"] == self.alice.user_id
        self.bob.pushes.clear()


@pytest.fixture
def fuzz(tmp_path: Path) -> Iterator[Fuzz]:
    async def setup() -> tuple[Any, Fuzz]:
        daemon, port = await start_daemon(Settings(
            listen="tcp:0:interface=127.0.0.1", db=f"sqlite:///{tmp_path}/fuzz.db",
            hash_cost=4, rate_limit=0))
        clients = []
        for name in ["fuzzer", "alice", "bob"]:
            c = await connect(port)
            await c.ok("register", name=name, password="password1")
            await c.login(name, "password1")
            clients.append(c)
        return daemon, Fuzz(port, *clients)

    daemon, f = pytest_twisted.blockon(defer.ensureDeferred(setup()))
    yield f
    for c in (f.fuzzer, f.alice, f.bob):
        c.close()
    pytest_twisted.blockon(defer.maybeDeferred(daemon.stopService))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=st.lists(lines, min_size=1, max_size=6))
def test_fuzzed_lines_each_get_an_answer_and_others_keep_chatting(
        fuzz: Fuzz, batch: list[bytes]) -> defer.Deferred[None]:
    # pytest-twisted runs each example in the reactor and waits for this Deferred
    if fuzz.fuzzer.transport is None or not fuzz.fuzzer.transport.connected:
        pytest.fail("the fuzzing connection was closed by the server")
    return defer.ensureDeferred(fuzz.check(batch))


@pytest.mark.logged_errors_ok
@pytest_twisted.ensureDeferred
async def test_database_that_stops_answering_gives_unavailable_then_recovers(
        own_mariadb: MariaDB) -> None:
    import os
    import signal

    daemon, port = await start_daemon(Settings(listen="tcp:0:interface=127.0.0.1",
                                               db=own_mariadb.url("qq_down"), hash_cost=4))
    assert own_mariadb.pid is not None
    try:
        c = await connect(port)
        await c.ok("register", name="alice", password="password1")
        await c.login("alice", "password1")
        os.kill(own_mariadb.pid, signal.SIGSTOP)  # hangs, as a wedged server would
        try:
            frame = await c.call("chat", to=c.user_id, text="hello?", wait=40)
            assert frame["code"] == "unavailable"
        finally:
            os.kill(own_mariadb.pid, signal.SIGCONT)
        # the pool reconnects by itself: no restart
        sent = await c.ok("chat", to=c.user_id, text="back again")
        history = await c.ok("history", **{"with": c.user_id})
        assert sent["id"] in [m["id"] for m in history["messages"]]
        c.close()
    finally:
        from twisted.internet import reactor

        await defer.maybeDeferred(daemon.stopService).addTimeout(20, reactor)
