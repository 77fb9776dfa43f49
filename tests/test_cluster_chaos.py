"""Issue #18: Redis and MariaDB killed, paused and restarted under a three-node cluster
with traffic, and no acknowledged message lost or doubled, no healthy user taken offline.

Twelve users, two on each side of six friendships, each pair on two different nodes
(straight to the daemons' ports), chat with each other the whole time as a client
following docs/protocol.md does: every send carries a fresh ``cid`` and is resent with
the same ``cid`` after ``unavailable`` or a lost connection until a reply with an
``id`` comes; every user acks, cumulatively, the highest message id its connection got,
and keeps the position the server's ``ack`` replies confirmed (``acked`` when present).
Three watchers, one per node, look at ``who``. Each test runs one fault in the middle of
the traffic. When it begins, two users (of two pairs) move: they log in on the third
node while their first connection is still open and an ack sent on it is unanswered,
retrying the login while it gets ``unavailable``; the first session is kicked. At the
end every user logs in again, drains its backlog, acks it, and logs in once more.

What is asserted, for every user as a recipient (section 6 of docs/protocol.md):

- **nothing lost**: every message whose send got a reply with an ``id`` reached the
  recipient, live or in a login backlog, at least once over the whole run; the
  recipient got no message that was not sent to it, each ``cid`` was stored once
  (one id per text) and a sender's ids grow with its sends;
- **nothing doubled**: no message came (live or in a backlog) after an ``ack`` reply
  had confirmed a position at or above its id: a reply read earlier on the same
  connection, or one from an earlier connection whenever it was read (that ack was
  committed before the later login, whose backlog then starts past it, or refused by
  the login stamp, and then its reply does not say so). A message that came again before its
  acknowledgement was confirmed is allowed: the protocol resends what is not
  acknowledged at the next login and asks clients to de-duplicate pushes by id (such
  repeats are counted and printed, not failed);
- a backlog comes oldest first, and after the final drain's ack a new login has none;
- **no healthy user taken offline**: no connection but a mover's was closed by a
  server, no user but a mover was ``kicked``, no user got an ``online: false`` presence
  for a friend who did not move (every node stays up in these tests; a kick is not a
  logout), and once the fault has healed
  every watcher's ``who`` has every user again within a deadline and keeps them until
  the end of a window in which a wrongful reaper pass would have run;
- the daemons are alive at the end, and chat flows again after the fault (each user's
  partner gets a message sent after the healing, live).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cluster_processes import (
    DisconnectedError,
    FaultyMariaDB,
    Frame,
    LineClient,
    ProcessCluster,
    wait_until,
)
from redis_server import RedisServer

from qqchat.relay.redis import HEARTBEAT, NODE_TTL_MS, REAP_AFTER

_db_names = itertools.count(1)

NODES = 3
PAIRS = 6  # twelve users
PACE = 0.15  # seconds a user waits (reading) between two sends
CALL_TIMEOUT = 30.0  # a reply slower than this counts as a lost connection
SEND_DEADLINE = 60.0  # one message stored, retries included
RECONNECT_DEADLINE = 60.0
#: after Redis is back a node reaps others only once its refreshes succeeded for
#: REAP_AFTER, in passes HEARTBEAT apart: a user wrongly reaped is gone by then
REAP_WINDOW = REAP_AFTER + HEARTBEAT + 2.0
PAUSE_REDIS = NODE_TTL_MS / 1000 + 3.0  # longer than the presence TTL
#: MariaDB paused for less, then for more, than the pool's 10 s read timeout
#: (qqchat/storage/pool.py): requests wait it out, or fail ``unavailable``
PAUSES_MARIADB = (5.0, 14.0)
HEAL_DEADLINE = 40.0


@dataclass
class Delivery:
    """One ``message`` that reached a user: on which connection (numbered from 1 in
    login order), in a backlog or live, and when it was read."""

    id: int
    text: str
    sender: int
    conn: int
    backlog: bool
    at: float


@dataclass
class Confirmation:
    """An ``ack`` reply: the position it says is stored, on which connection, when read."""

    upto: int
    conn: int
    at: float


def doubled(d: Delivery, confirmations: list[Confirmation]) -> Confirmation | None:
    """The confirmation ``d`` came after, if any: one read earlier on the same connection,
    or one from an earlier connection, whenever read (that ack was committed before the
    later login, which then starts past it, or refused, and its reply would not say so)."""
    for c in confirmations:
        if d.id <= c.upto and (c.conn < d.conn or (c.conn == d.conn and c.at < d.at)):
            return c
    return None


@dataclass
class Presence:
    user: int
    online: bool
    at: float


class ChatUser:
    """A user as a client following docs/protocol.md drives it (module docstring). One
    thread runs it; the test reads what it recorded once that thread has stopped.

    A user asked to ``move`` logs in on another node while its first connection is
    still open, right after sending an ack there without waiting for the reply, as a
    client does whose connection looks dead; the old session is kicked (no ``offline``
    for its friends), and the ack races the new login's backlog across two nodes."""

    def __init__(self, name: str, uid: int, port: int) -> None:
        self.name = name
        self.uid = uid
        self.port = port
        self.partner = 0
        self.conn: LineClient | None = None
        self.conn_no = 0
        self.conns = itertools.count(1)
        self.conn_max = 0  # the highest message id this connection got
        self.confirmed = 0  # the highest position an ack reply confirmed
        self.confirmations: list[Confirmation] = []
        self.seq = 0
        self.sent: dict[int, int] = {}  # seq -> message id, from replies with an id
        self.sent_at: dict[int, float] = {}
        self.deliveries: list[Delivery] = []
        self.presence: list[Presence] = []
        self.kicked: list[Frame] = []
        self.drops: list[str] = []  # why a connection had to be replaced
        self.unexpected: list[str] = []
        self.counts: Counter[str] = Counter()
        self.move_to: int | None = None  # set by the test: log in on this port
        self.moved = False
        self.lock = threading.Lock()

    # -- the connection --

    def login(self, why: str | None = None) -> None:
        """(Re)connect to this user's node and log in, retrying while the server is
        away; the backlog is recorded like any delivery."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if why is not None:
            self.drops.append(why)
        deadline = time.monotonic() + RECONNECT_DEADLINE
        last = ""
        while time.monotonic() < deadline:
            try:
                conn = LineClient(self.port, timeout=CALL_TIMEOUT)
            except OSError as e:
                last = f"connect: {e}"
                time.sleep(0.2)
                continue
            try:
                if self._login_on(conn):
                    return
                last = "unavailable"
            except (DisconnectedError, TimeoutError) as e:
                last = repr(e)
            conn.close()
            self.conn = None
            time.sleep(0.2)
        raise AssertionError(f"{self.name} could not log in again: {last}")

    def _login_on(self, conn: LineClient) -> bool:
        """Log in on ``conn``; True once ``synced`` came (``conn`` is then this user's)."""
        reply = conn.call("login", name=self.name, password="password1")
        if reply["type"] == "error":
            if reply["code"] == "unavailable":
                self.counts["login unavailable"] += 1
                return False
            raise AssertionError(f"login of {self.name}: {reply}")
        self.conn, self.conn_no, self.conn_max = conn, next(self.conns), 0
        count = 0
        while True:
            frame = conn.read_frame()
            if frame is None:
                raise TimeoutError(f"no 'synced' after the login of {self.name}")
            if frame["type"] == "message":
                self._message(frame, True, self.conn_no)
                count += 1
            elif frame["type"] == "synced":
                assert frame["count"] == count, (frame, count)
                return True
            elif frame["type"] == "error":  # the backlog could not be read: closing
                self.counts[f"backlog {frame.get('code')}"] += 1
                return False
            elif frame["type"] == "kicked":
                self._push(frame, self.conn_no)
                return False
            else:
                self.unexpected.append(f"in the backlog: {frame}")

    def _push(self, frame: Frame, conn_no: int) -> None:
        kind = frame["type"]
        if kind == "message":
            self._message(frame, False, conn_no)
        elif kind == "presence":
            self.presence.append(Presence(frame["user"], frame["online"], time.monotonic()))
        elif kind == "kicked":
            self.kicked.append(frame)
        elif kind == "ack" and frame.get("req") == "move":  # the ack a move left behind
            self._confirm(frame, conn_no)
        elif kind == "error" and frame.get("req") == "move":
            self.counts[f"move ack {frame.get('code')}"] += 1
        elif kind in ("error", "server_shutdown"):
            self.unexpected.append(f"push: {frame}")

    def _message(self, frame: Frame, backlog: bool, conn_no: int) -> None:
        with self.lock:
            self.deliveries.append(Delivery(frame["id"], frame["text"], frame["from"],
                                            conn_no, backlog, time.monotonic()))
        if conn_no == self.conn_no:
            self.conn_max = max(self.conn_max, frame["id"])

    def _confirm(self, reply: Frame, conn_no: int) -> None:
        upto = reply.get("acked", reply["id"])
        self.confirmations.append(Confirmation(upto, conn_no, time.monotonic()))
        self.confirmed = max(self.confirmed, upto)

    def _take_pushes(self) -> None:
        if self.conn is not None:
            pushes, self.conn.pushes = self.conn.pushes, []
            for frame in pushes:
                self._push(frame, self.conn_no)

    def request(self, type: str, **fields: object) -> Frame:
        """One request; the pushes that came before its reply are recorded first."""
        assert self.conn is not None
        try:
            return self.conn.call(type, timeout=CALL_TIMEOUT, **fields)
        finally:
            self._take_pushes()

    # -- what the client does --

    def run(self, stop: threading.Event, failures: list[str]) -> None:
        try:
            while not stop.is_set():
                if self.move_to is not None:
                    self.move()
                self.send_next()
                self.ack()
                self.idle(PACE)
        except Exception as e:  # the test fails on it, with the user's name
            failures.append(f"{self.name}: {e!r}")

    def send_next(self) -> None:
        """The next chat, with its own cid, resent with that cid until stored."""
        seq, deadline = self.seq, time.monotonic() + SEND_DEADLINE
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"chat {self.name}:{seq} not stored in {SEND_DEADLINE} s")
            try:
                reply = self.request("chat", to=self.partner, text=f"{self.name}:{seq}",
                                     cid=f"c{seq}")
            except (DisconnectedError, TimeoutError) as e:
                self.login(f"chat: {e!r}")
                continue
            if reply["type"] == "error":
                if reply["code"] != "unavailable":
                    raise AssertionError(f"chat {self.name}:{seq}: {reply}")
                self.counts["chat unavailable"] += 1
                self.idle(0.1)
                continue
            if reply.get("duplicate"):
                self.counts["chat duplicate"] += 1
            with self.lock:
                self.sent[seq] = reply["id"]
                self.sent_at[seq] = time.monotonic()
            self.seq += 1
            return

    def ack(self) -> None:
        """Ack the highest id this connection got, if not confirmed yet; a reply moves
        the confirmed position to what the server says it applied."""
        upto = self.conn_max
        if upto <= self.confirmed:
            return
        try:
            reply = self.request("ack", id=upto)
        except (DisconnectedError, TimeoutError) as e:
            self.login(f"ack: {e!r}")
            return
        if reply["type"] == "error":
            if reply["code"] != "unavailable":
                raise AssertionError(f"ack {upto} of {self.name}: {reply}")
            self.counts["ack unavailable"] += 1
            return
        if reply.get("acked", reply["id"]) < upto:
            self.counts["ack short"] += 1
        self._confirm(reply, self.conn_no)

    def move(self) -> None:
        """Log in on ``move_to`` with the old connection still open and an ack on it
        unanswered; then read the old one to its end (``kicked``). If the new login
        fails (the server is away), the old connection is kept and the move tried again."""
        assert self.move_to is not None and self.conn is not None
        old, old_no = self.conn, self.conn_no
        if self.conn_max > self.confirmed:
            with contextlib.suppress(DisconnectedError):
                old.send({"type": "ack", "id": self.conn_max, "req": "move"})
        try:
            new = LineClient(self.move_to, timeout=CALL_TIMEOUT)
        except OSError:
            return
        try:
            ok = self._login_on(new)
        except (DisconnectedError, TimeoutError):
            ok = False
        if not ok:
            new.close()
            # the old connection stays (a failed backlog read may have replaced its
            # session: then it is kicked, and the next read logs in again)
            self.conn, self.conn_no = old, old_no
            self.conn_max = max((d.id for d in self.deliveries if d.conn == old_no), default=0)
            self.counts["move retried"] += 1
            return
        self.port, self.move_to, self.moved = self.move_to, None, True
        for frame in old.pushes:
            self._push(frame, old_no)
        deadline = time.monotonic() + CALL_TIMEOUT
        try:
            while time.monotonic() < deadline:
                frame = old.read_frame(deadline - time.monotonic())
                if frame is not None:
                    self._push(frame, old_no)
            self.unexpected.append("the session a move replaced was not closed")
        except DisconnectedError:
            pass
        old.close()

    def idle(self, seconds: float) -> None:
        """Read pushes for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            assert self.conn is not None
            try:
                frame = self.conn.read_frame(left)
            except DisconnectedError as e:
                self.login(f"reading: {e!r}")
                continue
            if frame is not None:
                self._push(frame, self.conn_no)

    def drain(self) -> list[Delivery]:
        """Log in again, ack the whole backlog; returns the backlog."""
        before = len(self.deliveries)
        self.login()
        backlog = self.deliveries[before:]
        if backlog:
            reply = self.request("ack", id=backlog[-1].id)
            assert reply["type"] == "ack", reply
            self._confirm(reply, self.conn_no)
        return backlog

    # -- for the test's conditions (read from the test thread) --

    def got(self) -> set[int]:
        with self.lock:
            return {d.id for d in self.deliveries}

    def sent_since(self, t: float) -> list[int]:
        with self.lock:
            return [self.sent[s] for s, at in self.sent_at.items() if at >= t]


class Chaos:
    """The users, the watchers and the traffic of one test."""

    def __init__(self, cluster: ProcessCluster) -> None:
        self.cluster = cluster
        ports = [d.port for d in cluster.daemons]
        self.users: list[ChatUser] = []
        for i in range(2 * PAIRS):
            name, uid = cluster.register(f"chaos{i}")
            self.users.append(ChatUser(name, uid, ports[i % NODES]))
        # pairs (0,1), (2,3)...: users 2k and 2k+1 are on two different nodes
        for a, b in zip(self.users[::2], self.users[1::2], strict=True):
            a.partner, b.partner = b.uid, a.uid
        for u in self.users:
            u.login()
        for a, b in zip(self.users[::2], self.users[1::2], strict=True):
            assert a.conn is not None and b.conn is not None
            a.conn.ok("friend_add", to=b.uid)
            b.conn.ok("friend_accept", **{"from": a.uid})
        for u in self.users:  # what came with the friendships is not traffic
            u._take_pushes()
            u.presence.clear()
        self.watchers = [cluster.user(f"watcher{d.index}", port=d.port)
                         for d in cluster.daemons]
        self.everyone = {u.uid for u in self.users} | {
            w.user_id for w in self.watchers if w.user_id is not None}
        nodes = {cluster.node_of(u.uid) for u in self.users}
        assert nodes == set(range(NODES)), nodes
        #: two users of two pairs who move, at the fault, to the node neither side is on
        self.movers = [self.users[0], self.users[5]]
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.threads: list[threading.Thread] = []

    @contextlib.contextmanager
    def traffic(self) -> Iterator[None]:
        self.threads = [threading.Thread(target=u.run, args=(self.stop, self.failures),
                                         daemon=True, name=u.name) for u in self.users]
        for t in self.threads:
            t.start()
        try:
            yield
        finally:
            self.stop.set()
            for t in self.threads:
                t.join(SEND_DEADLINE + RECONNECT_DEADLINE)
        assert not any(t.is_alive() for t in self.threads), "a user's thread is stuck"

    def check_running(self) -> bool:
        assert not self.failures, self.failures
        return True

    def sends(self) -> int:
        return sum(len(u.sent) for u in self.users)

    def fault(self) -> None:
        """The fault has begun: the movers log in elsewhere as soon as they can."""
        ports = [d.port for d in self.cluster.daemons]
        by_uid = {u.uid: u for u in self.users}
        for u in self.movers:
            taken = {u.port, by_uid[u.partner].port}
            u.move_to = next(p for p in ports if p not in taken)

    def wait_sends(self, more: int, timeout: float, what: str) -> None:
        """Until ``more`` sends have been stored since now."""
        start = self.sends()
        wait_until(lambda: self.check_running() and self.sends() >= start + more,
                   timeout, what, interval=0.1)

    def wait_flowing(self, since: float) -> None:
        """Until each user's partner has got, live, a message sent after ``since``."""
        by_uid = {u.uid: u for u in self.users}

        def flowing() -> bool:
            self.check_running()
            return all(set(u.sent_since(since)) & by_uid[u.partner].got()
                       and u.move_to is None for u in self.users)

        wait_until(flowing, HEAL_DEADLINE, "chat to flow again between every pair, "
                   "and the movers to have moved",
                   interval=0.2)

    def who(self, watcher: LineClient) -> set[int]:
        reply = watcher.call("who", limit=500, timeout=CALL_TIMEOUT)
        if reply["type"] == "error":
            assert reply["code"] == "unavailable", reply
            return set()
        return {u["id"] for u in reply["users"]}

    def everyone_online(self) -> bool:
        self.check_running()
        return all(self.who(w) >= self.everyone for w in self.watchers)

    def hold(self, until: float) -> None:
        """Every user online for every watcher, from now until ``until`` (after the
        healing: a user taken offline by a reaper pass would show in that window)."""
        wait_until(self.everyone_online, HEAL_DEADLINE,
                   "every user in every node's who after the fault", interval=0.5)
        while time.monotonic() < until:
            for w in self.watchers:
                missing = self.everyone - self.who(w)
                assert not missing, (f"users {sorted(missing)} left who on {w.port} "
                                     f"{until - time.monotonic():.1f} s before the end")
            self.check_running()
            time.sleep(0.5)  # a sampling interval over a window, not a wait for a condition

    def finish(self, label: str) -> None:
        """The traffic has stopped: the final drain, then every invariant."""
        assert not self.failures, self.failures
        assert all(d.alive for d in self.cluster.daemons), self.cluster.logs()
        presence = {u.uid: list(u.presence) for u in self.users}
        drained: dict[int, list[Delivery]] = {}
        for u in self.users:
            drained[u.uid] = u.drain()
        problems: list[str] = []
        for u in self.users:  # everything acked: nothing comes again
            again = u.drain()
            if again:
                problems.append(f"{u.name} got {[d.id for d in again]} again after acking "
                                "its whole backlog")
        by_uid = {u.uid: u for u in self.users}
        repeats = 0
        for u in self.users:
            sender = by_uid[u.partner]
            ids = [sender.sent[s] for s in sorted(sender.sent)]
            if ids != sorted(set(ids)):
                problems.append(f"{sender.name}'s ids do not grow with its sends")
            texts = {mid: f"{sender.name}:{s}" for s, mid in sender.sent.items()}
            got: dict[int, str] = {}
            for d in u.deliveries:
                if d.id in got:
                    repeats += 1
                after = doubled(d, u.confirmations)
                if after is not None:
                    problems.append(f"{u.name} got {d.id} again after an ack reply "
                                    f"confirmed {after}: {d}")
                if d.sender != sender.uid or texts.get(d.id) != d.text:
                    problems.append(f"{u.name} got a message not sent to it: {d}")
                got[d.id] = d.text
            lost = sorted(set(texts) - set(got))
            if lost:
                problems.append(f"{u.name} never got {len(lost)} messages of "
                                f"{sender.name}: {lost[:10]}")
            extra = Counter(got.values()) - Counter(texts.values())
            if extra:
                problems.append(f"{u.name} got texts stored twice: {sorted(extra)[:10]}")
            for conn in {d.conn for d in u.deliveries if d.backlog}:
                backlog = [d.id for d in u.deliveries if d.backlog and d.conn == conn]
                if backlog != sorted(set(backlog)):
                    problems.append(f"{u.name}'s backlog is not oldest first: {backlog}")
        healthy: list[str] = []
        movers = {u.uid for u in self.movers}
        for u in self.users:
            if u.uid in movers:
                assert u.moved and u.kicked, (u.name, u.kicked, u.drops, u.counts)
            elif u.kicked:
                healthy.append(f"{u.name} was kicked: {u.kicked}")
            elif u.drops:
                healthy.append(f"{u.name}'s connection was lost: {u.drops}")
            offline = [p for p in presence[u.uid] if not p.online and p.user not in movers]
            if offline:
                healthy.append(f"{u.name} was told its friend went offline: {offline}")
            if u.unexpected:
                healthy.append(f"{u.name} got {u.unexpected}")
        counts = sum((u.counts for u in self.users), Counter())
        backlogged = sum(len(b) for b in drained.values())
        seen = Counter(p.online for events in presence.values() for p in events)
        print(f"{label}: {self.sends()} sends, {repeats} repeats before an ack, "
              f"{backlogged} in the final backlogs, presence online/offline "
              f"{seen[True]}/{seen[False]}, {dict(counts)}")
        assert not problems, "\n".join(problems[:40])
        assert not healthy, "\n".join(healthy)


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def db_server() -> Iterator[FaultyMariaDB]:
    server = FaultyMariaDB()
    server.start()
    yield server
    server.unpause()
    server.stop()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.resume()
    server.close()


@pytest.fixture(params=["lock", "positions"])
def chaos(db_server: FaultyMariaDB, redis: RedisServer, tmp_path: Path,
          request: pytest.FixtureRequest) -> Iterator[Chaos]:
    """The cluster, in each order of the message log (``--log-order``)."""
    name = f"qq_chaos_{next(_db_names)}"
    db_server.create_database(name)
    cluster = ProcessCluster(tmp_path, db_server, name, redis, nodes=NODES,
                             daemon_args=["--log-order", request.param])
    try:
        cluster.start()
        yield Chaos(cluster)
    finally:
        print(cluster.logs())  # shown when the test fails
        cluster.stop()
        redis.resume()
        db_server.unpause()
        if db_server.process is None:  # a failed test may leave it down
            db_server.restart()
        db_server.drop_database(name)


# -- the faults --------------------------------------------------------------------------


def test_redis_killed_and_restarted(chaos: Chaos, redis: RedisServer) -> None:
    """SIGKILL, then a restart on the same port and directory: Redis comes back empty
    (no persistence), so presence lives only in the nodes until they re-assert it."""
    with chaos.traffic():
        chaos.wait_sends(60, 30, "traffic before the fault")
        redis.kill()
        chaos.fault()
        chaos.wait_sends(24, 30, "chat to be stored while Redis is away")
        redis.restart()
        healed = time.monotonic()
        chaos.wait_flowing(healed)
        chaos.hold(healed + REAP_WINDOW)
    chaos.finish("redis killed")


def test_redis_paused_longer_than_the_presence_ttl(chaos: Chaos, redis: RedisServer) -> None:
    """SIGSTOP for longer than the node keys live: when Redis runs again every node key
    has expired at once; each node re-asserts its users, none reaps another's."""
    with chaos.traffic():
        chaos.wait_sends(60, 30, "traffic before the fault")
        redis.pause()
        chaos.fault()
        time.sleep(PAUSE_REDIS)  # the fault itself: Redis answers nothing for this long
        redis.resume()
        healed = time.monotonic()
        chaos.wait_flowing(healed)
        chaos.hold(healed + REAP_WINDOW)
    chaos.finish("redis paused")


def test_mariadb_killed_and_restarted(chaos: Chaos, db_server: FaultyMariaDB) -> None:
    """SIGKILL mid-traffic (commits in flight are lost or made durable, unanswered),
    then a restart on the same port and datadir through crash recovery."""
    with chaos.traffic():
        chaos.wait_sends(60, 30, "traffic before the fault")
        db_server.kill()
        chaos.fault()
        wait_until(lambda: chaos.check_running() and sum(
            u.counts["chat unavailable"] for u in chaos.users) >= 12, 30,
            "sends to get `unavailable` while MariaDB is down", interval=0.1)
        db_server.restart()
        healed = time.monotonic()
        chaos.wait_flowing(healed)
        chaos.hold(time.monotonic() + 2 * HEARTBEAT)
    chaos.finish("mariadb killed")


@pytest.mark.parametrize("seconds", PAUSES_MARIADB)
def test_mariadb_paused(chaos: Chaos, db_server: FaultyMariaDB, seconds: float) -> None:
    """SIGSTOP: every connection to MariaDB stays open and nothing answers; then
    SIGCONT."""
    with chaos.traffic():
        chaos.wait_sends(60, 30, "traffic before the fault")
        db_server.pause()
        chaos.fault()
        time.sleep(seconds)  # the fault itself
        db_server.unpause()
        healed = time.monotonic()
        chaos.wait_flowing(healed)
        chaos.hold(time.monotonic() + 2 * HEARTBEAT)
    chaos.finish(f"mariadb paused {seconds:.0f} s")
