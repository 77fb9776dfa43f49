"""Cluster mode: three daemons sharing a real MariaDB and a real Redis (C1-C4, F3, F5).

The daemons run in this process, each with its own pool, relay and node id,
listening on their own loopback ports; they meet only through MariaDB and Redis.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
import pytest_twisted
from chatclient import ChatClient, connect, wait_for
from conftest import start_daemon
from mariadb_server import MariaDB
from redis_server import RedisServer
from twisted.internet import defer

from qqchat.app import ChatDaemon, Settings

_names = itertools.count(1)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


def relay_lost(daemon: ChatDaemon) -> bool:
    """Whether the node's relay has seen all three of its Redis connections go."""
    relay = daemon.relay
    return (relay._sub is None  # type: ignore[attr-defined]
            and relay._cmd_factory.size == 0  # type: ignore[attr-defined]
            and not relay._publisher.connected)  # type: ignore[attr-defined]


@dataclass
class Cluster:
    daemons: list[ChatDaemon]
    ports: list[int]
    settings: Settings
    clients: list[ChatClient]

    async def client(self, node: int) -> ChatClient:
        c = await connect(self.ports[node])
        self.clients.append(c)
        return c

    async def user(self, name: str, node: int) -> ChatClient:
        c = await self.client(node)
        await c.ok("register", name=name, password="password1")
        await c.login(name, "password1")
        return c

    async def stop(self, node: int) -> None:
        from twisted.internet import reactor

        await defer.maybeDeferred(self.daemons[node].stopService).addTimeout(20, reactor)


@pytest_twisted.async_yield_fixture(params=["lock", "positions"])
async def cluster(request: pytest.FixtureRequest, mariadb: MariaDB, redis: RedisServer
                  ) -> AsyncIterator[Cluster]:
    """Three nodes, in each --log-order: every test holds for both."""
    name = f"qq_cluster_{next(_names)}"
    mariadb.create_database(name)
    settings = Settings(listen="tcp:0:interface=127.0.0.1", db=mariadb.url(name),
                        hash_cost=4, redis=redis.url, broadcast_anyone=True,
                        log_order=request.param)
    daemons, ports = [], []
    for n in range(3):
        daemon, port = await start_daemon(Settings(**{**settings.__dict__,
                                                      "node_id": f"node{n}"}))
        await daemon.relay.connected  # type: ignore[attr-defined]
        daemons.append(daemon)
        ports.append(port)
    c = Cluster(daemons, ports, settings, [])
    yield c
    from twisted.internet import reactor

    for client in c.clients:
        if client.transport is not None and client.transport.connected:
            client.close()
    for daemon in daemons:
        if daemon.running:
            await defer.maybeDeferred(daemon.stopService).addTimeout(20, reactor)
    mariadb.drop_database(name)


@pytest_twisted.ensureDeferred
async def test_chat_across_nodes_both_ways(cluster: Cluster) -> None:
    alice = await cluster.user("alice", 0)
    bob = await cluster.user("bob", 1)
    sent = await alice.ok("chat", to=bob.user_id, text="hi from node 0")
    got = await bob.push("message")
    assert (got["id"], got["text"], got["name"]) == (sent["id"], "hi from node 0", "alice")
    back = await bob.ok("chat", to=alice.user_id, text="hi from node 1")
    got = await alice.push("message")
    assert got["id"] == back["id"]
    await bob.ok("ack", id=sent["id"])


@pytest_twisted.ensureDeferred
async def test_acks_checked_together_on_mariadb_each_go_as_far_as_their_user_saw(
        cluster: Cluster) -> None:
    """Acks checked in the same turn share one MariaDB transaction (the reads in one
    multi-statement, the writes in another); each stops where its own user's session
    has a gap, and what was acked is not sent again at the next login."""
    alice = await cluster.user("alice", 0)
    bob = await cluster.user("bob", 1)
    carol = await cluster.user("carol", 1)
    to_bob = [(await alice.ok("chat", to=bob.user_id, text=t))["id"] for t in ("b1", "b2")]
    to_carol = (await alice.ok("chat", to=carol.user_id, text="c1"))["id"]
    await bob.messages(2)
    await carol.messages(1)
    log = cluster.daemons[1].writer
    # as if b2 were still on its way to bob's session from another node
    checks = [log.checked_ack(bob.user_id, 0, to_bob[1], frozenset({to_bob[0]})),
              log.checked_ack(carol.user_id, 0, to_carol, frozenset({to_carol}))]
    assert await defer.gatherResults(checks) == [to_bob[0], to_carol]

    bob_again = await cluster.client(2)
    _, backlog = await bob_again.login("bob", "password1")
    assert [m["id"] for m in backlog] == [to_bob[1]]
    carol_again = await cluster.client(2)
    _, backlog = await carol_again.login("carol", "password1")
    assert backlog == []


@pytest_twisted.ensureDeferred
async def test_group_and_broadcast_across_nodes(cluster: Cluster) -> None:
    users = [await cluster.user(f"u{n}", n) for n in range(3)]
    gid = (await users[0].ok("group_create", name="all-nodes"))["group"]["id"]
    await users[1].ok("group_join", group=gid)
    await users[2].ok("group_join", group=gid)
    sent = await users[1].ok("group_chat", group=gid, text="to the group")
    for u in (users[0], users[2]):
        msg = await u.push("message", match=lambda f: f.get("group") == gid)
        assert msg["id"] == sent["id"]
    cast = await users[2].ok("broadcast", text="to everyone")
    for u in users[:2]:
        msg = await u.push("message", match=lambda f: f.get("broadcast") is True)
        assert msg["id"] == cast["id"]
    # not echoed to the sender, whether by its own node or through Redis: nodes 0 and
    # 1 got the broadcast from the broadcast channel, so Redis had it before this marker, which
    # therefore reaches node 2 after it on that channel
    marker = await users[0].ok("broadcast", text="marker")
    await users[2].nothing_before("message", lambda f: f["id"] == marker["id"])


@pytest_twisted.ensureDeferred
async def test_presence_and_who_are_cluster_wide(cluster: Cluster) -> None:
    alice = await cluster.user("alice", 0)
    bob = await cluster.user("bob", 2)
    await alice.ok("friend_add", to=bob.user_id)
    req = await bob.push("friend_request")
    assert req["from"] == alice.user_id
    await bob.ok("friend_accept", **{"from": alice.user_id})
    await alice.push("friend_added")
    assert (await alice.ok("friends"))["friends"][0]["online"] is True
    who = await bob.ok("who")
    assert sorted(u["name"] for u in who["users"]) == ["alice", "bob"] and who["total"] == 2
    await bob.ok("logout")
    off = await alice.push("presence")
    assert (off["user"], off["online"]) == (bob.user_id, False)
    again = await cluster.client(1)
    await again.login("bob", "password1")
    on = await alice.push("presence")
    assert (on["user"], on["online"]) == (bob.user_id, True)


@pytest_twisted.ensureDeferred
async def test_login_on_another_node_kicks_the_first(cluster: Cluster) -> None:
    first = await cluster.user("alice", 0)
    second = await cluster.client(1)
    await second.login("alice", "password1")
    kicked = await first.push("kicked")
    assert kicked["reason"]
    await first.closed
    bob = await cluster.user("bob", 2)
    sent = await bob.ok("chat", to=second.user_id, text="which one gets it?")
    got = await second.push("message")
    assert got["id"] == sent["id"]
    who = await bob.ok("who")
    assert who["total"] == 2


@pytest_twisted.ensureDeferred
async def test_simultaneous_logins_leave_exactly_one_session(cluster: Cluster) -> None:
    setup = await cluster.client(0)
    alice_id = (await setup.ok("register", name="alice", password="password1"))["id"]
    clients = [await cluster.client(n) for n in range(3)]
    # a login overtaken by another may be kicked before its reply: either is fine
    await defer.DeferredList([
        defer.Deferred.fromCoroutine(c.call("login", name="alice", password="password1"))
        for c in clients], consumeErrors=True)
    await wait_for(lambda: sum(c.closed.called for c in clients) >= 2,
                   "two of the three sessions to be kicked")
    alive = [c for c in clients if not c.closed.called]
    assert len(alive) == 1
    # Every kick was published before the login that caused it was answered; a chat
    # to alice from another node goes through her channel after them, so once it
    # is here no kick is still on its way to the survivor.
    home = clients.index(alive[0])
    bob = await cluster.user("bob", (home + 1) % 3)
    sent = await bob.ok("chat", to=alice_id, text="still you?")
    assert (await alive[0].push("message"))["id"] == sent["id"]
    assert not alive[0].closed.called
    assert sum(1 for c in clients if any(f.get("type") == "kicked" for f in c.frames)) == 2
    who = await alive[0].ok("who")
    assert sorted(u["name"] for u in who["users"]) == ["alice", "bob"]


@pytest_twisted.ensureDeferred
async def test_stopping_one_node_takes_only_its_users_offline(cluster: Cluster) -> None:
    a = await cluster.user("alice", 0)
    b = await cluster.user("bob", 1)
    c = await cluster.user("carol", 2)
    await a.ok("friend_add", to=b.user_id)
    await b.ok("friend_accept", **{"from": a.user_id})
    await cluster.stop(1)
    await b.closed
    off = await a.push("presence")
    assert (off["user"], off["online"]) == (b.user_id, False)
    who = await c.ok("who")
    assert sorted(u["name"] for u in who["users"]) == ["alice", "carol"]
    # the others still chat across the remaining nodes
    sent = await a.ok("chat", to=c.user_id, text="still here")
    assert (await c.push("message"))["id"] == sent["id"]


@pytest.mark.logged_errors_ok
@pytest_twisted.ensureDeferred
async def test_redis_restart_during_traffic_recovers_without_restarting_daemons(
        cluster: Cluster, redis: RedisServer) -> None:
    alice = await cluster.user("alice", 0)
    bob = await cluster.user("bob", 1)
    before = await alice.ok("chat", to=bob.user_id, text="before")
    assert (await bob.push("message"))["id"] == before["id"]
    await bob.ok("ack", id=before["id"])

    redis.stop()
    during = await alice.ok("chat", to=bob.user_id, text="while redis is down")
    newcomer = await cluster.client(2)
    await newcomer.ok("register", name="carol", password="password1")
    refused = await newcomer.call("login", name="carol", password="password1")
    assert refused["code"] == "unavailable"
    # every node has seen Redis go, so what follows is a reconnection on each
    await wait_for(lambda: all(relay_lost(d) for d in cluster.daemons),
                   "every node to lose its Redis connections")
    redis.start()

    # the relay reconnects, re-subscribes and resends what bob missed from the log
    got = await bob.push("message", wait=30)
    assert got["id"] == during["id"]
    await bob.ok("ack", id=during["id"])
    after = await alice.ok("chat", to=bob.user_id, text="after")
    assert (await bob.push("message", wait=30))["id"] == after["id"]

    async def logged_in() -> bool:
        # node 2 reconnects on its own schedule: retry as a client would
        reply = await newcomer.call("login", name="carol", password="password1")
        if reply["type"] == "login":
            return True
        assert reply["code"] == "unavailable"
        return False

    await wait_for(logged_in, "carol's login on node 2", timeout=30, interval=0.1)
    await newcomer.push("synced")

    # every node re-asserts its users in the emptied Redis once it is reconnected
    async def everyone_online() -> bool:
        who = await newcomer.ok("who")
        return sorted(u["name"] for u in who["users"]) == ["alice", "bob", "carol"]

    await wait_for(everyone_online, "alice, bob and carol to be online", timeout=20,
                   interval=0.1)


@pytest_twisted.ensureDeferred
async def test_node_restarted_under_its_old_id_clears_what_it_held(
        cluster: Cluster, redis: RedisServer) -> None:
    """A node killed without a goodbye and restarted at once under the same id keeps
    its heartbeat key alive, so no other node reaps it: it must clear its own past."""
    from cluster_processes import redis_command

    alice = await cluster.user("alice", 0)
    # what a node "phoenix" killed a moment ago left behind: alice's session on it
    redis_command(redis.port, "SET", f"qq:sess:{alice.user_id}", "phoenix|oldtoken")
    redis_command(redis.port, "SADD", "qq:nodeusers:phoenix", alice.user_id)
    redis_command(redis.port, "SET", "qq:node:phoenix", "1", "PX", 15000)
    daemon, _ = await start_daemon(Settings(**{**cluster.settings.__dict__,
                                               "node_id": "phoenix"}))
    cluster.daemons.append(daemon)
    await daemon.relay.connected  # type: ignore[attr-defined]

    async def cleared() -> bool:
        return (await alice.ok("who"))["users"] == []

    await wait_for(cleared, "phoenix to clear the session it held")


@pytest_twisted.ensureDeferred
async def test_token_issued_on_one_node_resumes_on_another(cluster: Cluster) -> None:
    c = await cluster.client(0)
    await c.ok("register", name="alice", password="password1")
    token = (await c.ok("login", name="alice", password="password1", remember=True))["token"]
    await c.push("synced")
    on_two = await cluster.client(2)
    reply = await on_two.ok("login", token=token)
    assert reply["user"]["name"] == "alice" and reply["token"] == token
    kicked = await c.push("kicked")  # one session per user holds for token logins too
    assert kicked["type"] == "kicked"
    await on_two.push("synced")
    await on_two.ok("logout")
    again = await cluster.client(1)
    assert (await again.call("login", token=token))["code"] == "bad_token"


@pytest_twisted.ensureDeferred
async def test_search_on_any_node_finds_users_and_groups_of_all(cluster: Cluster) -> None:
    users = [await cluster.user(f"member{n}", n) for n in range(3)]
    gid = (await users[2].ok("group_create", name="members-club"))["group"]["id"]
    for node in range(3):
        asker = await cluster.client(node)
        await asker.ok("register", name=f"asker{node}", password="password1")
        await asker.login(f"asker{node}", "password1")
        found = await asker.ok("user_search", query="MEMBER")
        assert [u["name"] for u in found["users"]] == ["member0", "member1", "member2"]
        groups = await asker.ok("group_search", query="members")
        assert [g["id"] for g in groups["groups"]] == [gid]


@pytest_twisted.ensureDeferred
async def test_failed_login_budget_is_shared_by_every_node(cluster: Cluster) -> None:
    """Guesses spread over nodes count against one budget (kept in Redis)."""
    c = await cluster.client(0)
    await c.ok("register", name="alice", password="password1")
    for k in range(5):
        guesser = await cluster.client(k % 2)
        reply = await guesser.call("login", name="alice", password=f"wrong-{k}")
        assert reply["code"] == "bad_credentials"
    on_three = await cluster.client(2)
    refused = await on_three.call("login", name="alice", password="password1")
    assert refused["code"] == "rate_limited" and refused["retry_after"] > 0
