"""Bad input (P2, R4): each error code over TCP, and a property-based protocol fuzzer.

Each bad line gets an error on the same connection, the connection stays usable
(except past the line cap), and other clients keep being served meanwhile.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_twisted
from chatclient import ChatClient, connect, pause
from conftest import Running, start_daemon
from hypothesis import given
from hypothesis import strategies as st
from mariadb_server import MariaDB
from twisted.internet import defer, task

from qqchat.app import ChatDaemon, Settings
from qqchat.services.limits import Limits


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
    # alice stays silent; bob keeps talking, a ping every 0.2 s, until she is cut off
    for _ in range(50):
        await bob.ok("ping")
        if alice.closed.called:
            break
        await pause(0.2)
    assert alice.closed.called, "alice was not cut off within 10 s"
    assert [f["code"] for f in alice.take_pushes("error")] == ["idle_timeout"]
    # bob's last other request came just after alice's last: only his pings keep him
    await pause(0.2)
    assert not bob.closed.called, "bob was cut off although he kept talking"
    await bob.ok("ping")
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
                      max_leaves=6)
# A few fields per request, not every optional one, mostly scalars: drawing fewer
# values keeps an example cheap enough for 10 000 of them, and the dispatcher
# reports only the first fault anyway.
requests = st.builds(lambda typ, fields: {"type": typ, **fields},
                     st.sampled_from(REQUEST_TYPES) | values,
                     st.dictionaries(st.sampled_from(FIELDS), scalars | values, max_size=4))


def _line_ok(raw: bytes) -> bool:
    return b"\n" not in raw and b"\r" not in raw and bool(raw.strip())


lines = st.one_of(
    requests.map(lambda r: json.dumps(r).encode()),
    values.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=120).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=120),
).filter(_line_ok)

#: a chat round trip on loopback takes milliseconds; this is far above any spike a
#: busy shared machine causes, and far below "the daemon is stuck"
WITNESS_BOUND = 5.0
WITNESS_PAUSE = 0.02
WITNESS_MAX_ROUNDS = 100_000


class Witness:
    """alice chats to bob in the background while a fuzzer runs: one message at a
    time, a short pause between, every round trip timed and checked.

    It runs beside the examples rather than inside each one, so a slow commit does
    not slow every example; each example calls ``check``, so a line that stalls or
    breaks the daemon still fails the example that sent it.
    """

    def __init__(self, alice: ChatClient, bob: ChatClient,
                 bound: float = WITNESS_BOUND) -> None:
        self.alice, self.bob, self.bound = alice, bob, bound
        self.rounds = 0
        self.max_latency = 0.0
        self.failure: str | None = None
        self.sent_at: float | None = None
        self._stopping = False
        self._done: defer.Deferred[None] | None = None

    def start(self) -> None:
        self._done = defer.ensureDeferred(self._run())

    async def _run(self) -> None:
        from twisted.internet import reactor

        try:
            while not self._stopping and self.rounds < WITNESS_MAX_ROUNDS:
                await self._round(f"still here {self.rounds}")
                await task.deferLater(reactor, WITNESS_PAUSE, lambda: None)
        except Exception as e:
            self.failure = f"{type(e).__name__}: {e}"

    async def _round(self, text: str) -> None:
        self.sent_at = start = time.monotonic()
        got = defer.ensureDeferred(self.bob.push(
            "message", wait=self.bound, match=lambda f: f.get("text") == text))
        try:
            reply = await self.alice.call("chat", wait=self.bound, to=self.bob.user_id,
                                          text=text)
            assert reply["type"] == "chat", f"the witness's chat got {reply}"
            msg = await got
        except BaseException:
            got.addErrback(lambda _: None)
            raise
        assert (msg["id"], msg["from"], msg["to"]) == (
            reply["id"], self.alice.user_id, self.bob.user_id), msg
        self.max_latency = max(self.max_latency, time.monotonic() - start)
        self.rounds += 1
        self.sent_at = None
        self.alice.pushes.clear()
        self.bob.pushes.clear()

    def check(self) -> None:
        """Fail if the witness's chat failed, or has waited longer than the bound."""
        assert self.failure is None, f"the witness chat failed: {self.failure}"
        if self.sent_at is not None:
            waited = time.monotonic() - self.sent_at
            assert waited < self.bound, f"the witness chat has waited {waited:.1f} s"
        assert self.max_latency < self.bound, f"a witness chat took {self.max_latency:.1f} s"

    async def stop(self) -> None:
        self._stopping = True
        assert self._done is not None
        await self._done
        self.check()
        assert self.rounds > 0, "the witness never completed a chat"

    def tear_down(self, fuzzer: ChatClient, daemon: ChatDaemon) -> None:
        """A fuzz fixture's end: check the witness, and whatever that says, close the
        clients and stop the daemon."""
        try:
            pytest_twisted.blockon(defer.ensureDeferred(self.stop()))
        finally:
            for c in (fuzzer, self.alice, self.bob):
                c.close()
            pytest_twisted.blockon(defer.maybeDeferred(daemon.stopService))


class Fuzz:
    """A fuzzing client, and a witness chatting beside it.

    Each example's lines go out in one write, followed by a ``ping``: every line
    must have its own answer, in order, before that ``pong``.
    """

    def __init__(self, port: int, fuzzer: ChatClient, witness: Witness) -> None:
        self.port, self.fuzzer, self.witness = port, fuzzer, witness
        self.n = itertools.count()

    async def check(self, batch: list[bytes]) -> None:
        n = next(self.n)
        frames = self.fuzzer.frames
        del frames[:]
        self.fuzzer.send_raw(b"".join(raw + b"\n" for raw in batch))
        pong = await self.fuzzer.call("ping", req=f"~sync-{n}", wait=15)
        assert pong["type"] == "pong"
        end = next(i for i, f in enumerate(frames) if f is pong)
        answers = [f for f in frames[:end] if f.get("type") not in PUSH_TYPES]
        assert len(answers) == len(batch), f"{len(answers)} answers to {batch!r}: {answers}"
        for raw, answer in zip(batch, answers, strict=True):
            check_answer(raw, answer)
        self.fuzzer.pushes.clear()
        self.witness.check()


_NO_REQ = object()


def check_answer(raw: bytes, answer: dict[str, Any]) -> None:
    """The answer a line must get, from the rules of protocol.md sections 2-3 (JSON
    as the daemon's decoder reads it: orjson, so also no NaN, nothing past a double)."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        assert answer == {"type": "error", "code": "bad_json", "message": answer["message"]}, raw
        return
    if not isinstance(msg, dict):
        assert (answer["type"], answer["code"]) == ("error", "bad_request"), raw
        assert "req" not in answer, raw
        return
    req = msg.get("req", _NO_REQ)
    too_big = (isinstance(req, int | float) and not isinstance(req, bool)
               and abs(req) > 2**53)
    if isinstance(req, dict | list) or too_big:
        assert (answer["type"], answer["code"], answer["field"]) == ("error", "bad_field",
                                                                     "req"), raw
        assert "req" not in answer, raw
        return
    if req is _NO_REQ:
        assert "req" not in answer, (raw, answer)
    else:
        echoed = answer.get("req", _NO_REQ)
        assert type(echoed) is type(req) and echoed == req, (raw, answer)
    typ = msg.get("type")
    assert answer["type"] in ("error", "pong" if typ == "ping" else typ), (raw, answer)
    if answer["type"] == "error":
        assert isinstance(answer["code"], str) and answer["message"], (raw, answer)


@pytest.fixture
def fuzz(tmp_path: Path) -> Iterator[Fuzz]:
    async def setup() -> tuple[Any, Fuzz]:
        daemon, port = await start_daemon(Settings(
            listen="tcp:0:interface=127.0.0.1", db=f"sqlite:///{tmp_path}/fuzz.db",
            hash_cost=4, rate_limit=0, limits=Limits(send_rate=0, register_rate=0)))
        clients = []
        for name in ["fuzzer", "alice", "bob"]:
            c = await connect(port)
            await c.ok("register", name=name, password="password1")
            await c.login(name, "password1")
            clients.append(c)
        witness = Witness(clients[1], clients[2])
        witness.start()
        return daemon, Fuzz(port, clients[0], witness)

    daemon, f = pytest_twisted.blockon(defer.ensureDeferred(setup()))
    yield f
    f.witness.tear_down(f.fuzzer, daemon)


# examples: hypothesis_profiles.FUZZ_EXAMPLES (10 000 unless QQCHAT_FUZZ_EXAMPLES says less)
@given(batch=st.lists(lines, min_size=1, max_size=4))
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
