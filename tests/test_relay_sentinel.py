"""Redis high availability with Sentinel: the daemons follow a failover.

Real processes on loopback: a Redis master, its replica, three ``redis-sentinel``
(``redis_sentinel.py`` gives their settings: down after 1 s, quorum 2), a MariaDB,
and two ``twistd qqchat`` daemons given ``--redis redis+sentinel://...``. Users on
both nodes chat across them while the master is SIGKILLed; Sentinel promotes the
replica, and the daemons must find it, re-subscribe, resync from the log and
re-assert presence by themselves.

Below that, ``SentinelEndpoint`` in this process against the same Sentinels.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from cluster_processes import (
    DisconnectedError,
    Frame,
    LineClient,
    ProcessCluster,
    reader_thread,
    redis_command,
    wait_until,
)
from mariadb_server import MariaDB
from ports import free_port
from redis_sentinel import MASTER, RedisSentinels
from redis_server import RedisServer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from txredisapi import ResponseError

from qqchat.errors import UnavailableError
from qqchat.relay.hub import SessionHub
from qqchat.relay.redis import RedisRelay, parse_redis_url
from qqchat.relay.sentinel import (
    MasterNotFoundError,
    RedisReplyError,
    SentinelEndpoint,
    parse_reply,
)

#: the target: cross-node delivery is back this soon after the master died
#: (Sentinel's detection, 1 s here, included)
RESUME_WITHIN = 10.0
WAIT = 10.0
_db_names = itertools.count(1)


@pytest.fixture
def sentinels() -> Iterator[RedisSentinels]:
    s = RedisSentinels().start()
    try:
        yield s
    finally:
        print(s.output())  # shown when the test fails
        s.close()


@pytest.fixture
def cluster(mariadb: MariaDB, sentinels: RedisSentinels,
            tmp_path: Path) -> Iterator[ProcessCluster]:
    name = f"qq_sentinel_{next(_db_names)}"
    mariadb.create_database(name)
    c = ProcessCluster(tmp_path, mariadb, name, sentinels, nodes=2)
    try:
        c.start()
        yield c
    finally:
        print(c.logs())
        c.stop()
        mariadb.drop_database(name)


class Inbox:
    """What a recipient got and when, followed from a reader thread; acks as it goes."""

    def __init__(self, client: LineClient, every: int = 10) -> None:
        self.client = client
        self.every = every
        self.arrivals: list[tuple[float, Frame]] = []
        self.lock = threading.Lock()

    def __call__(self, frame: Frame) -> None:
        if frame["type"] != "message":
            return
        with self.lock:
            self.arrivals.append((time.monotonic(), frame))
            due = len(self.arrivals) % self.every == 0
        if due:
            with contextlib.suppress(DisconnectedError):
                self.client.send({"type": "ack", "id": frame["id"], "req": "ack"})

    def ids(self) -> list[int]:
        with self.lock:
            return [f["id"] for _, f in self.arrivals]

    def first_after(self, ids: set[int]) -> float | None:
        """When the first of ``ids`` arrived."""
        with self.lock:
            return min((t for t, f in self.arrivals if f["id"] in ids), default=None)


def send(client: LineClient, to: int, text: str, cid: str) -> int:
    """One chat, retried while the daemon answers ``unavailable``; its stored id."""
    deadline = time.monotonic() + 30
    while True:
        reply = client.call("chat", to=to, text=text, cid=cid)
        if reply["type"] != "error":
            return int(reply["id"])
        assert reply["code"] == "unavailable" and time.monotonic() < deadline, reply
        time.sleep(0.05)




def test_master_killed_mid_traffic_loses_nothing_and_delivery_resumes(
        cluster: ProcessCluster, sentinels: RedisSentinels) -> None:
    a, b = (d.port for d in cluster.daemons)
    # both directions: alice (node 0) -> bob (node 1), carol (node 1) -> dave (node 0)
    alice, bob = cluster.user("alice", a), cluster.user("bob", b)
    carol, dave = cluster.user("carol", b), cluster.user("dave", a)
    everyone = {c.user_id for c in (alice, bob, carol, dave)}
    assert [cluster.node_of(c.user_id) for c in (alice, bob, carol, dave)] == [0, 1, 1, 0]
    old_master = sentinels.port

    streams = [(alice, bob, Inbox(bob)), (carol, dave, Inbox(dave))]
    sent: list[dict[int, float]] = [{}, {}]  # per stream: message id -> when sent
    texts: list[dict[int, str]] = [{}, {}]
    killed_at: float | None = None
    resumed: list[float | None] = [None, None]
    deadline = time.monotonic() + 90
    with reader_thread(bob, streams[0][2]), reader_thread(dave, streams[1][2]):
        seq, resumed_seq = 0, None
        while resumed_seq is None or seq < resumed_seq + 40:
            assert time.monotonic() < deadline, f"stuck at {seq}\n{cluster.logs()}"
            if seq == 30:
                sentinels.master.kill()
                killed_at = time.monotonic()
            for i, (sender, recipient, inbox) in enumerate(streams):
                text = f"s{i}m{seq}"
                mid = send(sender, recipient.user_id, text, f"k{i}-{seq}")  # type: ignore[arg-type]
                sent[i][mid], texts[i][mid] = time.monotonic(), text
                if killed_at is not None and resumed[i] is None:
                    after = {m for m, t in sent[i].items() if t > killed_at}
                    resumed[i] = inbox.first_after(after)
            if None not in resumed and resumed_seq is None:
                resumed_seq = seq
            seq += 1
            time.sleep(0.02)
        for i, (_, _, inbox) in enumerate(streams):
            wait_until(lambda inbox=inbox, i=i: set(inbox.ids()) >= set(sent[i]), 30,
                       f"every message of stream {i} to arrive", interval=0.1)

    assert killed_at is not None
    times = [t - killed_at for t in resumed if t is not None]
    print(f"sentinel failover: {sum(map(len, sent))} sent, cross-node delivery resumed "
          f"{times[0]:.2f} s and {times[1]:.2f} s after the master's SIGKILL")
    assert max(times) <= RESUME_WITHIN, times
    assert sentinels.failed_over() and sentinels.port != old_master

    # every message whose send was answered arrived exactly once, as sent
    for i, (_, _, inbox) in enumerate(streams):
        ids = inbox.ids()
        assert sorted(ids) == sorted(set(ids)), "a message arrived twice"
        assert set(ids) == set(sent[i])
        assert {f["id"]: f["text"] for _, f in inbox.arrivals} == texts[i]

    # presence is right on the new master, as seen by both nodes
    for c in (alice, carol):
        wait_until(lambda c=c: c.who_or_none() == everyone, WAIT, "who after the failover")
    assert [cluster.node_of(c.user_id) for c in (alice, bob, carol, dave)] == [0, 1, 1, 0]
    for d in cluster.daemons:
        assert d.alive, cluster.logs()
        assert "Sentinel moved the Redis master" in d.log.read_text(), d.output()

    # a login on node 1 kicks alice's session on node 0, through the new master
    again = cluster.connect(b)
    again.login("alice")
    assert alice.push(lambda f: f["type"] == "kicked", WAIT)["reason"]
    with pytest.raises(DisconnectedError):
        alice.read_frame(5)
    assert cluster.node_of(again.user_id) == 1  # type: ignore[arg-type]
    # and the nodes still push to each other both ways
    again.ok("chat", to=dave.user_id, text="after the failover")
    dave.message(text="after the failover")
    dave.ok("chat", to=again.user_id, text="and back")
    again.message(text="and back")


def test_manual_failover_moves_every_connection_to_the_new_master(
        cluster: ProcessCluster, sentinels: RedisSentinels) -> None:
    """The old master lives on as a replica: connections left on it would read stale
    keys and publish where nobody listens, so each one must move."""
    a, b = (d.port for d in cluster.daemons)
    alice, bob = cluster.user("alice", a), cluster.user("bob", b)
    sentinels.sentinels[0].command("SENTINEL", "FAILOVER", MASTER)
    wait_until(sentinels.failed_over, 30, "the failover", interval=0.1)
    new = sentinels.replica.port

    def on_new_master() -> bool:
        clients = redis_command(new, "CLIENT", "LIST").splitlines()
        ours = [c for c in clients if " name=sentinel-" not in f" {c} "
                and " flags=S " not in f" {c} " and " cmd=client" not in c]
        return len(ours) >= 2 * 3  # each node: commands, subscription, publishes

    wait_until(on_new_master, 15, "every daemon connection on the new master")
    wait_until(lambda: alice.who_or_none() == {alice.user_id, bob.user_id}, WAIT, "who")
    alice.ok("chat", to=bob.user_id, text="hello")
    bob.message(text="hello")
    bob.ok("chat", to=alice.user_id, text="hi")
    alice.message(text="hi")
    again = cluster.connect(b)
    again.login("alice")
    assert alice.push(lambda f: f["type"] == "kicked", WAIT)["reason"]


# -- SentinelEndpoint in this process -------------------------------------------------------


def test_parse_reply_reads_resp() -> None:
    assert parse_reply(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6379\r\n") == (
        [b"127.0.0.1", b"6379"], 29)
    assert parse_reply(b"*-1\r\n") == (None, 5)
    assert parse_reply(b":7\r\n+OK\r\n", 4) == (b"OK", 9)
    err, _ = parse_reply(b"-READONLY no\r\n")
    assert str(err) == "READONLY no"


@pytest_twisted.ensureDeferred
async def test_resolve_skips_a_dead_sentinel_and_finds_the_master(
        sentinels: RedisSentinels) -> None:
    from twisted.internet import reactor

    s = sentinels
    dead = ("127.0.0.1", free_port())
    ep = SentinelEndpoint(reactor, [dead] + [("127.0.0.1", x.port) for x in s.sentinels],
                          MASTER, None)
    assert await ep.resolve() == ("127.0.0.1", s.master.port)
    assert ep.sentinels[0] != dead  # the one that answered is asked first next time
    unknown = SentinelEndpoint(reactor, [("127.0.0.1", s.sentinels[0].port)], "nosuch", None)
    with pytest.raises(MasterNotFoundError, match="knows no master nosuch"):
        await unknown.resolve()


@pytest_twisted.ensureDeferred
async def test_role_probe_authenticates_with_the_data_nodes_password() -> None:
    from twisted.internet import reactor

    server = RedisServer(args=["--requirepass", "s3cret"]).start()
    try:
        address = ("127.0.0.1", server.port)
        ep = SentinelEndpoint(reactor, [("127.0.0.1", 1)], MASTER, "s3cret")
        assert await ep._role(address) == "master"
        wrong = SentinelEndpoint(reactor, [("127.0.0.1", 1)], MASTER, "nope")
        with pytest.raises(RedisReplyError, match="WRONGPASS"):
            await wrong._role(address)
    finally:
        server.close()


# -- the relay's reactions, with fake connections --------------------------------------------


class _Conn:
    def __init__(self, port: int) -> None:
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))


def _relay_with_connections(url: str, ports: tuple[int, int, int]
                            ) -> tuple[RedisRelay, list[StringTransport]]:
    relay = RedisRelay(parse_redis_url(url), SessionHub(), MemoryReactorClock(), "me")
    sub, cmd, pub = (_Conn(p) for p in ports)
    relay._sub = sub  # type: ignore[assignment]
    relay._cmd_factory.pool.append(cmd)
    relay._publisher._proto = pub  # type: ignore[assignment]
    return relay, [sub.transport, cmd.transport, pub.transport]


def test_a_new_master_drops_the_connections_left_on_the_old_one() -> None:
    relay, transports = _relay_with_connections("redis+sentinel://127.0.0.1:1/m", (7, 8, 7))
    relay._master_moved(("127.0.0.1", 7))
    assert [t.disconnecting for t in transports] == [False, True, False]


@pytest.mark.logged_errors_ok
def test_readonly_reconnects_everything_under_sentinel_only() -> None:
    readonly = Failure(ResponseError("READONLY You can't write against a read only replica."))
    relay, transports = _relay_with_connections("redis+sentinel://127.0.0.1:1/m", (7, 7, 7))
    with pytest.raises(UnavailableError):
        relay._unavailable(readonly)
    assert all(t.disconnecting for t in transports)
    # one server named by --redis: reconnecting to it would change nothing
    relay, transports = _relay_with_connections("redis://127.0.0.1:7/0", (7, 7, 7))
    with pytest.raises(UnavailableError):
        relay._unavailable(readonly)
    assert not any(t.disconnecting for t in transports)
