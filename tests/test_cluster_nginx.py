"""The cluster as operators run it: three twistd daemons, a real MariaDB, a real
redis-server and nginx (the shipped stream config) in front, all separate
processes on loopback.

What only real processes can show: a node killed with SIGKILL mid-stream, a
node stopped with SIGTERM, MariaDB and Redis going away and coming back while
clients keep sending, and nginx spreading clients over the nodes (least_conn)
and steering them around a dead one.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from cluster_processes import (
    DisconnectedError,
    Frame,
    LineClient,
    ProcessCluster,
    ReplyError,
    RestartableMariaDB,
    reader_thread,
    wait_until,
)
from redis_server import RedisServer
from wsclient import UPGRADE, BlockingWS, http_get

_db_names = itertools.count(1)
T = TypeVar("T")

REAP_LIMIT = 30.0  # C2: a killed node's users are offline within this
SEND_DEADLINE = 60.0  # a single message may take this long, retries included


@pytest.fixture(scope="module")
def db_server() -> Iterator[RestartableMariaDB]:
    """One MariaDB for the module, ours alone: one test stops and restarts it."""
    server = RestartableMariaDB()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def cluster(db_server: RestartableMariaDB, redis: RedisServer,
            tmp_path: Path) -> Iterator[ProcessCluster]:
    name = f"qq_nginx_{next(_db_names)}"
    db_server.create_database(name)
    c = ProcessCluster(tmp_path, db_server, name, redis)
    try:
        c.start()
        yield c
    finally:
        print(c.logs())  # shown when the test fails
        c.stop()
        if db_server.process is None:  # a failed test may leave it stopped
            db_server.resume()
        db_server.drop_database(name)


# -- helpers -------------------------------------------------------------------------------


def relogin(cluster: ProcessCluster, name: str,
            deadline: float) -> tuple[LineClient, list[Frame]]:
    """Connect through nginx and log in, retrying while a node or the database is
    away; returns the client and its login backlog."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            c = cluster.connect()
            _, backlog = c.login(name)
            return c, backlog
        except (OSError, DisconnectedError, TimeoutError) as e:
            last = e
        except ReplyError as e:
            if e.code != "unavailable":
                raise
            last = e
        time.sleep(0.2)
    raise AssertionError(f"could not log {name} in again: {last}\n{cluster.logs()}")


def send_chat(cluster: ProcessCluster, client: LineClient, to: int, text: str, cid: str,
              errors: Counter[str]) -> tuple[LineClient, Frame]:
    """One chat with its cid, retried as a client should: on ``unavailable`` later, on
    a dropped connection through nginx again (logged in again) with the same cid."""
    assert client.name is not None
    deadline = time.monotonic() + SEND_DEADLINE
    while time.monotonic() < deadline:
        try:
            reply = client.call("chat", to=to, text=text, cid=cid)
        except (DisconnectedError, TimeoutError):
            errors["dropped"] += 1
            client.close()
            client, _ = relogin(cluster, client.name, deadline)
            continue
        if reply["type"] != "error":
            if reply.get("duplicate"):
                errors["duplicate"] += 1  # an earlier try was stored after all
            return client, reply
        if reply["code"] != "unavailable":
            raise AssertionError(f"chat {cid} failed: {reply}")
        errors["unavailable"] += 1
        time.sleep(0.1)
    raise AssertionError(f"chat {cid} not stored within {SEND_DEADLINE:.0f} s\n"
                         f"{cluster.logs()}")


def until_available(action: Callable[[], T], errors: Counter[str], timeout: float = 15) -> T:
    """Run ``action`` until it gets past `unavailable` errors (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except ReplyError as e:
            if e.code != "unavailable" or time.monotonic() > deadline:
                raise
            errors["unavailable"] += 1
            time.sleep(0.1)




class Inbox:
    """What a recipient got, followed from a reader thread; acks every ``every``
    messages, as a client should, and remembers how far the server confirmed."""

    def __init__(self, client: LineClient, every: int = 20) -> None:
        self.client = client
        self.every = every
        self.messages: list[Frame] = []
        self.acked = 0
        self.lock = threading.Lock()

    def __call__(self, frame: Frame) -> None:
        if frame["type"] == "message":
            with self.lock:
                self.messages.append(frame)
                due = len(self.messages) % self.every == 0
            if due:
                with contextlib.suppress(DisconnectedError):
                    self.client.send({"type": "ack", "id": frame["id"], "req": "ack"})
        elif frame["type"] == "ack" and "id" in frame:
            self.acked = max(self.acked, frame.get("acked", frame["id"]))

    def ids(self) -> list[int]:
        with self.lock:
            return [f["id"] for f in self.messages]


def check_delivery(sent: dict[int, int], live: list[Frame], backlog: list[Frame],
                   acked: int) -> None:
    """Every message the sender got a success reply for reached the recipient exactly
    once (by id: each send stored once despite retries), in send order, and what
    was acknowledged did not come again."""
    order = [sent[seq] for seq in sorted(sent)]
    assert order == sorted(order) and len(set(order)) == len(order), \
        "message ids must increase in send order, one per cid"
    live_ids = [f["id"] for f in live]
    backlog_ids = [f["id"] for f in backlog]
    assert live_ids == sorted(set(live_ids)), "live pushes out of order or doubled"
    assert backlog_ids == sorted(set(backlog_ids)), "backlog out of order or doubled"
    assert all(i > acked for i in backlog_ids), "an acknowledged message came again"
    got = {f["id"]: f for f in live} | {f["id"]: f for f in backlog}
    assert set(got) == set(order), (
        f"missing {sorted(set(order) - set(got))[:10]}, extra {sorted(set(got) - set(order))[:10]}")
    by_id = {mid: seq for seq, mid in sent.items()}
    for mid, frame in got.items():
        assert frame["text"] == f"m{by_id[mid]}", frame
    texts = Counter(f["text"] for f in got.values())
    assert max(texts.values()) == 1, "a retried send was stored twice"


# -- tests -----------------------------------------------------------------------------------


def recipient_and_sender(cluster: ProcessCluster) -> tuple[str, int, LineClient, LineClient]:
    """A recipient and a sender logged in through nginx on two different nodes."""
    rname, rid = cluster.register("recipient")
    sname, _ = cluster.register("sender")
    recipient = cluster.connect()
    recipient.login(rname)
    sender = cluster.connect()
    sender.login(sname)
    assert cluster.node_of(sender.user_id) not in (  # type: ignore[arg-type]
        None, cluster.node_of(rid))
    return rname, rid, recipient, sender


def test_clients_spread_over_nodes_and_chat_across_them(cluster: ProcessCluster) -> None:
    a, b, c = (cluster.user() for _ in range(3))
    nodes = [cluster.node_of(x.user_id) for x in (a, b, c)]  # type: ignore[arg-type]
    assert sorted(nodes) == [0, 1, 2], f"least_conn should spread 3 clients: {nodes}"
    taken: dict[int | None, list[Frame]] = {}

    def message(dst: LineClient, text: str) -> Frame:
        """The message ``text`` at ``dst``, remembered for the final count."""
        frame = dst.message(text=text)
        taken.setdefault(dst.user_id, []).append(frame)
        return frame

    # one to one, every pair of nodes, both directions
    for src, dst in itertools.permutations((a, b, c), 2):
        text = f"{src.name} to {dst.name}"
        mid = src.ok("chat", to=dst.user_id, text=text)["id"]
        got = message(dst, text)
        assert (got["id"], got["from"], got["to"]) == (mid, src.user_id, dst.user_id)

    # a group spanning the three nodes
    group = a.ok("group_create", name="across")["group"]["id"]
    b.ok("group_join", group=group)
    c.ok("group_join", group=group)
    for src in (b, a, c):
        text = f"{src.name} to the group"
        mid = src.ok("group_chat", group=group, text=text)["id"]
        for dst in {a, b, c} - {src}:
            assert message(dst, text)["id"] == mid
            assert all(f.get("text") != text for f in dst.pushes)

    # broadcasts from two nodes
    for src in (c, a):
        text = f"{src.name} to everyone"
        mid = src.ok("broadcast", text=text)["id"]
        for dst in {a, b, c} - {src}:
            got = message(dst, text)
            assert (got["id"], got["broadcast"]) == (mid, True)

    # straight to the daemons too, mixed with clients behind nginx
    direct = [cluster.user(port=d.port) for d in cluster.daemons]
    assert [cluster.node_of(x.user_id) for x in direct] == [0, 1, 2]  # type: ignore[arg-type]
    for src, dst in [(direct[0], direct[2]), (direct[2], direct[0]), (direct[1], a),
                     (a, direct[1])]:
        text = f"{src.name} straight to {dst.name}"
        mid = src.ok("chat", to=dst.user_id, text=text)["id"]
        assert message(dst, text)["id"] == mid

    everyone = {x.user_id for x in (a, b, c, *direct)}
    for x in (a, direct[1], direct[2]):
        assert x.who() == everyone
    # Nothing arrived twice, nothing was sent to oneself: every message each client
    # got, taken above or not, once the last of two markers has come through each
    # path a message reached it by (a broadcast on qq:all, from nodes 0 and 1, and a
    # chat from another node on its own channel): relay order is per channel.
    clients = (a, b, c, *direct)
    home = {x.user_id: cluster.node_of(x.user_id) for x in clients}  # type: ignore[arg-type]
    for src in direct[:2]:
        text = f"last broadcast from {src.name}"
        src.ok("broadcast", text=text)
        for dst in set(clients) - {src}:
            message(dst, text)
    for dst in clients:
        src = next(x for x in direct if home[x.user_id] != home[dst.user_id])
        text = f"last chat to {dst.name}"
        src.ok("chat", to=dst.user_id, text=text)
        message(dst, text)
    for x in clients:
        got = taken[x.user_id] + [f for f in x.pushes if f["type"] == "message"]
        ids = [f["id"] for f in got]
        assert len(ids) == len(set(ids)), f"{x.name} got a message twice: {sorted(ids)}"
        assert all(f["from"] != x.user_id for f in got), f"{x.name} got its own message"


def test_websockets_through_nginx_chat_with_tcp_clients_on_other_nodes(
        cluster: ProcessCluster) -> None:
    """The web port behind nginx: real WebSocket handshakes through its HTTP proxy,
    spread over the nodes, chatting with TCP users elsewhere; a WebSocket login kicks
    the TCP session of the same user on another node; a foreign page is refused."""
    assert cluster.nginx is not None
    web = cluster.nginx.web_port
    origin = f"http://127.0.0.1:{web}"
    tcp = cluster.user()
    names = [cluster.register()[0] for _ in range(3)]
    browsers = []
    for name in names:
        ws = BlockingWS(web, origin=origin)
        assert ws.accepted is not None
        headers = {k.decode().lower(): v.decode() for k, v in ws.accepted.extra_headers}
        assert headers["x-content-type-options"] == "nosniff"
        ws.send(type="login", name=name, password="password1", req="login")
        me = ws.until("login")["user"]["id"]
        ws.until("synced")
        browsers.append((ws, me))
    nodes = {cluster.node_of(me) for _, me in browsers}
    assert len(nodes) >= 2, f"least_conn should spread the WebSockets: {nodes}"

    for n, (ws, me) in enumerate(browsers):
        mid = tcp.ok("chat", to=me, text=f"tcp to web {n}")["id"]
        assert ws.until("message")["id"] == mid
        ws.send(type="chat", to=tcp.user_id, text=f"web {n} to tcp", req=n)
        assert tcp.message(text=f"web {n} to tcp")["id"] == ws.until("chat")["id"]

    # the same user logging in from a browser, on another node: the TCP session goes
    home = cluster.node_of(tcp.user_id)  # type: ignore[arg-type]
    for _ in range(len(cluster.daemons)):
        again = BlockingWS(web, origin=origin)
        again.send(type="login", name=tcp.name, password="password1")
        again.until("synced")
        if cluster.node_of(tcp.user_id) != home:  # type: ignore[arg-type]
            break
    else:
        raise AssertionError("no WebSocket login landed on another node")
    assert tcp.push(lambda f: f["type"] == "kicked")["reason"]

    status, headers, _ = http_get(web, "/ws", {**UPGRADE, "Origin": "http://evil.example"})
    assert status == 403 and headers["content-security-policy"].startswith("default-src")


def test_login_on_another_node_kicks_the_first(cluster: ProcessCluster) -> None:
    first = cluster.user()
    home = cluster.node_of(first.user_id)  # type: ignore[arg-type]
    second = cluster.connect()
    second.login(first.name)  # type: ignore[arg-type]
    assert cluster.node_of(first.user_id) not in (None, home)  # type: ignore[arg-type]
    kicked = first.push(lambda f: f["type"] == "kicked")
    assert kicked["reason"]
    with pytest.raises(DisconnectedError):
        first.read_frame(5)
    watcher = cluster.user()
    assert watcher.who() == {first.user_id, watcher.user_id}
    second.ok("chat", to=watcher.user_id, text="still here")
    watcher.message(text="still here")


def test_sigkill_of_the_recipients_node_loses_nothing(cluster: ProcessCluster) -> None:
    rname, rid, recipient, sender = recipient_and_sender(cluster)
    dead = cluster.node_of(rid)
    # a user who stays on the doomed node, and one on the third node
    doomed = cluster.user("doomed", port=cluster.daemons[dead].port)  # type: ignore[index]
    third = next(d for d in cluster.daemons
                 if d.index not in (dead, cluster.node_of(sender.user_id)))  # type: ignore[arg-type]
    bystander = cluster.user("bystander", port=third.port)
    assert {rid, doomed.user_id, bystander.user_id} <= sender.who()

    inbox = Inbox(recipient)
    sent: dict[int, int] = {}
    errors: Counter[str] = Counter()
    killed_at = 0.0
    with reader_thread(recipient, inbox) as dropped:
        for seq in range(500):
            if seq == 150:
                cluster.daemons[dead].kill()  # type: ignore[index]
                killed_at = time.monotonic()
            sender, reply = send_chat(cluster, sender, rid, f"m{seq}", f"k{seq}", errors)
            sent[seq] = reply["id"]
        wait_until(dropped.is_set, 10, "the recipient's connection to drop")
    live = list(inbox.messages)
    assert 0 < len(live) <= 500

    # back through nginx, which steers around the dead node
    again, backlog = relogin(cluster, rname, time.monotonic() + 20)
    assert cluster.node_of(rid) not in (None, dead)
    check_delivery(sent, live, backlog, inbox.acked)
    if backlog:
        again.ok("ack", id=backlog[-1]["id"])
    again.close()
    _, rest = relogin(cluster, rname, time.monotonic() + 20)
    assert rest == [], "acknowledged messages came again"

    # the dead node's users go offline within 30 s of the kill; nobody else does
    def reaped() -> bool:
        online = sender.who()
        assert {rid, bystander.user_id} <= online
        return doomed.user_id not in online

    wait_until(reaped, REAP_LIMIT - (time.monotonic() - killed_at),
               "the killed node's users to go offline", interval=0.5)
    print(f"sigkill: {len(live)} live, {len(backlog)} in the backlog, retries {dict(errors)}, "
          f"offline after {time.monotonic() - killed_at:.1f} s")


def test_sigterm_takes_only_that_nodes_users_offline(cluster: ProcessCluster) -> None:
    on = [[cluster.user(port=d.port) for _ in range(2)] for d in cluster.daemons]
    watcher = on[1][0]
    everyone = {c.user_id for users in on for c in users}
    assert watcher.who() == everyone

    # a sender on the node that stops keeps sending: it moves to another node
    # through nginx and resends what got no reply, with the same cids
    streamer_name, streamer_id = cluster.register("streamer")
    streamer = cluster.connect(cluster.daemons[0].port)
    streamer.login(streamer_name)
    _, target_id = cluster.register("target")
    sent: dict[int, int] = {}
    errors: Counter[str] = Counter()
    failures: list[BaseException] = []
    halfway = threading.Event()

    def stream() -> None:
        client = streamer
        try:
            for seq in range(200):
                if seq == 50:
                    halfway.set()
                client, reply = send_chat(cluster, client, target_id, f"m{seq}", f"k{seq}",
                                          errors)
                sent[seq] = reply["id"]
                time.sleep(0.005)
        except BaseException as e:
            failures.append(e)
            halfway.set()

    sender_thread = threading.Thread(target=stream, daemon=True)
    sender_thread.start()
    assert halfway.wait(30)

    took = cluster.daemons[0].terminate()
    assert took is not None and took < 10, f"SIGTERM took {took} s"
    for c in on[0]:
        assert c.push(lambda f: f["type"] == "server_shutdown", 5)
        with pytest.raises(DisconnectedError):
            c.read_frame(5)
    remaining = {c.user_id for users in on[1:] for c in users}
    # at once: the node logged its own users out before it exited (the streamer is
    # left out: it is logging in again elsewhere)
    assert watcher.who() - {streamer_id} == remaining
    # and it stays so: nobody else is dropped by the stop or by a reaper pass
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        assert on[2][1].who() - {streamer_id} == remaining
        time.sleep(0.5)
    on[2][0].ok("chat", to=on[1][1].user_id, text="still together")
    on[1][1].message(text="still together")
    # new clients through nginx go to the nodes that are up
    late = cluster.user()
    assert cluster.node_of(late.user_id) in (1, 2)  # type: ignore[arg-type]

    sender_thread.join(SEND_DEADLINE)
    assert not sender_thread.is_alive() and failures == [], failures
    assert errors["dropped"] >= 1, "the stop should have cut the streamer off"
    assert cluster.node_of(streamer_id) in (1, 2)
    _, backlog = relogin(cluster, "target", time.monotonic() + 20)
    check_delivery(sent, [], backlog, 0)
    print(f"sigterm: the node exited {took:.2f} s after the signal; streamer retries "
          f"{dict(errors)}")


def test_mariadb_stopped_and_restarted_during_traffic(cluster: ProcessCluster,
                                                      db_server: RestartableMariaDB) -> None:
    rname, rid, recipient, sender = recipient_and_sender(cluster)

    go = threading.Event()
    outage: dict[str, float] = {}

    def stop_and_start() -> None:
        if go.wait(30):
            db_server.halt()
            outage["down"] = time.monotonic()
            time.sleep(5)
            db_server.resume()
            outage["up"] = time.monotonic()

    outage_thread = threading.Thread(target=stop_and_start, daemon=True)
    outage_thread.start()
    inbox = Inbox(recipient, every=10)
    sent: dict[int, int] = {}
    errors: Counter[str] = Counter()
    retried: set[int] = set()
    deadline = time.monotonic() + 90
    with reader_thread(recipient, inbox):
        seq, after_up = 0, None
        # send before, during and after the outage: 40 more once MariaDB is back
        while after_up is None or seq < after_up + 40:
            assert time.monotonic() < deadline, f"stuck at {seq}\n{cluster.logs()}"
            if seq == 40:
                go.set()
            sender, reply = send_chat(cluster, sender, rid, f"m{seq}", f"k{seq}", errors)
            sent[seq] = reply["id"]
            if reply.get("duplicate"):
                retried.add(reply["id"])
            seq += 1
            if after_up is None and "up" in outage:
                after_up = seq
            time.sleep(0.02)
        outage_thread.join(60)
        # Every message whose first try was stored and answered is pushed live. One
        # stored by a try that got `unavailable` (the commit went through, its answer
        # did not) is answered `duplicate` on the retry and not pushed: it comes in
        # the backlog instead.
        pushed = set(sent.values()) - retried
        wait_until(lambda: set(inbox.ids()) >= pushed, 10, "the live pushes", interval=0.2)
        not_live = sorted(set(sent.values()) - set(inbox.ids()))
    assert errors["unavailable"] > 0, "requests during the outage should get `unavailable`"
    assert all(d.alive for d in cluster.daemons), cluster.logs()

    # nothing acknowledged is lost: a fresh login has whatever was not pushed
    _, backlog = relogin(cluster, rname, time.monotonic() + 20)
    check_delivery(sent, list(inbox.messages), backlog, inbox.acked)
    # every node serves requests that need the database again, without a restart.
    # A pooled connection opened before the outage fails its first request after it
    # (adbapi finds a dead connection only by using it, then reconnects), so a
    # client may still see `unavailable` a few times: it retries, as it would anyway
    late: Counter[str] = Counter()
    peers = [until_available(lambda d=d: cluster.user(port=d.port), late)
             for d in cluster.daemons]
    for src, dst in zip(peers, peers[1:] + peers[:1], strict=True):
        mid = until_available(lambda s=src, d=dst: s.ok(
            "chat", to=d.user_id, text=f"after from {s.name}", cid="after"), late)["id"]
        assert dst.message(text=f"after from {src.name}")["id"] == mid
    print(f"mariadb: {len(sent)} sent, retries {dict(errors)}, not pushed live {not_live}, "
          f"outage {outage['up'] - outage['down']:.1f} s, "
          f"unavailable after it {late['unavailable']}")


def test_redis_stopped_and_restarted_during_traffic(cluster: ProcessCluster,
                                                    redis: RedisServer) -> None:
    _, rid, recipient, sender = recipient_and_sender(cluster)
    watcher = cluster.user("watcher")

    inbox = Inbox(recipient, every=10)
    sent: dict[int, int] = {}
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + 90
    with reader_thread(recipient, inbox):
        seq, down_at, after_up = 0, 0.0, None
        while after_up is None or seq < after_up + 40:
            assert time.monotonic() < deadline, f"stuck at {seq}\n{cluster.logs()}"
            if seq == 40:
                redis.stop()
                down_at = time.monotonic()
            if after_up is None and down_at and time.monotonic() - down_at >= 5:
                redis.start()  # same port, empty: no persistence
                after_up = seq
            sender, reply = send_chat(cluster, sender, rid, f"m{seq}", f"k{seq}", errors)
            sent[seq] = reply["id"]
            seq += 1
            time.sleep(0.02)
        # delivery resumes by itself: re-subscribed, then resynced from the log
        wait_until(lambda: set(inbox.ids()) >= set(sent.values()), 30,
                   "every message to reach the still-connected recipient", interval=0.2)
    assert all(d.alive for d in cluster.daemons), cluster.logs()
    got = {f["id"]: f["text"] for f in inbox.messages}
    assert got == {mid: f"m{seq}" for seq, mid in sent.items()}
    # presence is re-asserted into the empty Redis by the nodes that hold the users
    wait_until(lambda: watcher.who_or_none() >= {rid, sender.user_id, watcher.user_id}, 20,
               "presence to come back")
    print(f"redis: {len(sent)} sent, retries {dict(errors)}, "
          f"{len(inbox.messages) - len(got)} pushed twice")
