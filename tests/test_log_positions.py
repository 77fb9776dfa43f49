"""``--log-order positions`` against a real MariaDB: batches of two nodes, and of one,
overlap and commit out of id order, and a checked ack never passes a message that
commits late (F7).

Each "node" is a ``LogWriter`` over its own pool and ``LogPositions``; they meet in
the database, and node A's ``ClusterView`` hears node B's position directly (in a
daemon it comes through Redis, which tests/test_cluster.py covers). A batch is made
to commit late by a row lock the test holds (``Holder``), and the test waits for the
server to report the batch blocked before the next step.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import pytest
import pytest_twisted
from mariadb_server import MariaDB
from test_storage_mariadb import Cluster, blocked_by, new_users
from twisted.internet import defer, task

from qqchat.errors import UnavailableError
from qqchat.storage.log import KIND_DIRECT, NewMessage
from qqchat.storage.positions import (
    RECORD_EVERY,
    ClusterView,
    LeaseExpiredError,
    LogPositions,
    PositionsService,
)
from qqchat.storage.schema import apply_schema
from qqchat.storage.stores import Stores
from qqchat.storage.writer import LogWriter

_names = itertools.count(1)


@dataclass
class Node:
    name: str
    stores: Stores
    positions: LogPositions
    writer: LogWriter

    def send(self, sender: int, to: int, text: str) -> defer.Deferred[int]:
        d = self.writer.append(NewMessage(KIND_DIRECT, sender, text, recipient=to))
        return d.addCallback(lambda stored: stored.id)


class Positioned(Cluster):
    """Nodes in ``--log-order positions``; A's view of the cluster (``view``) counts
    the nodes in ``live`` and hears each node's position as it moves."""

    def __init__(self, server: MariaDB, db: str) -> None:
        super().__init__(server, db)
        self.live: set[str] = set()
        self.nodes: list[Node] = []
        self.view: ClusterView | None = None
        self.services: list[PositionsService] = []
        self.views: list[ClusterView] = []

    def positioned(self, name: str, lease: float = 10.0, margin: float = 5.0) -> Node:
        from twisted.internet import reactor

        stores = self.node()
        stores.engine.log_order = "positions"
        positions = LogPositions(name, reactor, lease=lease, margin=margin)
        own = ClusterView(positions, self._live, reactor)
        self.views.append(own)
        safe: Callable[[int], defer.Deferred[int]] | None = None
        if self.view is None:  # the first node checks acks
            self.view = view = own

            def safe(upto: int) -> defer.Deferred[int]:
                return defer.Deferred.fromCoroutine(view.safe(upto))

        def publish(position: int) -> None:
            for v in self.views:
                v.heard(name, position)

        # each node publishes (to every node's view: Redis in a daemon) and probes
        # the sequence while idle and behind
        service = PositionsService(own, stores.message_log.sequence_head, publish, reactor)
        self.services.append(service)
        writer = LogWriter(stores.message_log, reactor, positions=positions, safe=safe)
        node = Node(name, stores, positions, writer)
        self.nodes.append(node)
        self.live.add(name)
        return node

    async def _live(self) -> Iterable[str]:
        return set(self.live)

    async def start(self) -> None:
        """Each node's idle position: the sequence's head (``PositionsService``'s probe),
        then each node's publications and probes."""
        for node in self.nodes:
            node.positions.note_head(await node.stores.message_log.sequence_head())
        for service in self.services:
            service.startService()

    def close(self) -> None:
        for service in self.services:
            if service.running:
                service.stopService()
        super().close()


@pytest_twisted.async_yield_fixture
async def cluster(mariadb: MariaDB) -> AsyncIterator[Positioned]:
    db = f"qq_positions_{next(_names)}"
    mariadb.create_database(db)
    c = Positioned(mariadb, db)
    first = c.node()
    await first.message_log._pool.runInteraction(apply_schema, "mysql")
    yield c
    c.close()
    mariadb.drop_database(db)


async def stored_ids(node: Node) -> list[int]:
    rows = await node.stores.message_log._all("SELECT id FROM messages ORDER BY id")
    return [int(r[0]) for r in rows]


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor

    await task.deferLater(reactor, seconds, lambda: None)


async def late_message(cluster: Positioned, node: Node, sender: int, to: int
                       ) -> tuple[defer.Deferred[int], int]:
    """A message of ``node``'s that has its id but cannot commit: the test holds the
    conversation row its batch upserts. Returns its Deferred and the holder's
    connection id."""
    holder = cluster.holder()
    await holder.execute("SELECT last_id FROM conversations WHERE user_id = %s AND"
                         " peer_id = %s FOR UPDATE", sender, to)
    late = node.send(sender, to, "late")
    await cluster.monitor.until("the late batch blocked", blocked_by(holder.thread_id),
                                late)
    assert not late.called
    cluster.late_holder = holder  # type: ignore[attr-defined]
    return late, holder.thread_id


@pytest_twisted.ensureDeferred
async def test_an_ack_is_held_below_a_message_that_commits_late(cluster: Positioned) -> None:
    """Node B's message to bob takes id X and is held before its commit; node A's
    message to bob takes a greater id Y and commits (A does not wait for B). Bob's
    session was sent Y only: the log shows nothing else in (m0, Y], so an ack that
    trusted the log alone would reach Y and skip X for good. It stops at the safe
    position, below X, and the reply says so; once X commits, the ack goes on."""
    a = cluster.positioned("A")
    b = cluster.positioned("B")
    alice, bob, carol = await new_users(a.stores, "alice", "bob", "carol")
    await cluster.start()
    m0 = await b.send(alice, bob, "first")  # the conversation row the test will hold

    late, _ = await late_message(cluster, b, alice, bob)
    y = await a.send(carol, bob, "overtakes")
    ids = await stored_ids(a)
    assert y in ids and max(ids) == y and not late.called

    reached = await a.writer.checked_ack(bob, m0, y, frozenset({y}), None)
    assert m0 <= reached < y, "the ack passed a message still on its way"

    await cluster.late_holder.commit()  # type: ignore[attr-defined]
    x = await late
    assert m0 < x < y
    assert reached < x
    assert await a.writer.checked_ack(bob, reached, y, frozenset({x, y}), None) == y


@pytest_twisted.ensureDeferred
async def test_one_nodes_batches_overlap_and_answer_in_order(cluster: Positioned) -> None:
    """A batch of one node commits while the node's earlier batch is still held;
    its senders hear only after the earlier batch's, and the node's position stays
    below the held batch's id until it commits."""
    a = cluster.positioned("A")
    alice, bob, carol = await new_users(a.stores, "alice", "bob", "carol")
    await cluster.start()
    m0 = await a.send(alice, bob, "first")

    late, _ = await late_message(cluster, a, alice, bob)
    later = a.send(carol, bob, "second batch")
    for _ in range(100):  # the second batch commits though the first is held
        ids = await stored_ids(a)
        if len(ids) == 2:
            break
        await sleep(0.05)
    assert len(ids) == 2 and ids[0] == m0
    assert not later.called, "a later batch answered before an earlier one"
    assert a.positions.position() < ids[1]
    await cluster.late_holder.commit()  # type: ignore[attr-defined]
    x, y = await late, await later
    assert len({m0, x, y}) == 3
    assert a.positions.position() >= max(x, y)


@pytest_twisted.ensureDeferred
async def test_a_node_that_drops_out_cannot_commit_below_the_others_acks(
        cluster: Positioned) -> None:
    """Node B stops counting (its presence key expired: out of ``live``, and its own
    fence says so) while a batch of its is held: A's ack no longer waits for B, and
    B's batch is rolled back when it reaches its commit, its sender told
    ``unavailable``: the message the ack passed never existed."""
    from twisted.internet import reactor

    a = cluster.positioned("A")
    b = cluster.positioned("B")
    alice, bob, carol = await new_users(a.stores, "alice", "bob", "carol")
    await cluster.start()
    fence = b.positions.fence = _fence(reactor.seconds())
    m0 = await b.send(alice, bob, "first")

    late, _ = await late_message(cluster, b, alice, bob)
    y = await a.send(carol, bob, "overtakes")
    held = await a.writer.checked_ack(bob, m0, y, frozenset({y}), None)
    assert held < y  # B still counts

    cluster.live.discard("B")  # B's key expired; B's fence ran out with it
    fence.alive_until = reactor.seconds()
    assert await a.writer.checked_ack(bob, held, y, frozenset({y}), None) == y

    await cluster.late_holder.commit()  # type: ignore[attr-defined]
    with pytest.raises(UnavailableError):
        await late
    assert await stored_ids(a) == [m0, y]


@pytest_twisted.ensureDeferred
async def test_a_batch_past_its_lease_is_rolled_back_and_stops_holding_acks(
        cluster: Positioned) -> None:
    """A batch held past its lease holds the others' acks back only until its lease
    and margin are over, and is then rolled back, never committed below them."""
    a = cluster.positioned("A")
    b = cluster.positioned("B", lease=0.5, margin=0.3)
    alice, bob, carol = await new_users(a.stores, "alice", "bob", "carol")
    await cluster.start()
    m0 = await b.send(alice, bob, "first")

    late, _ = await late_message(cluster, b, alice, bob)
    y = await a.send(carol, bob, "overtakes")
    assert await a.writer.checked_ack(bob, m0, y, frozenset({y}), None) < y
    await sleep(0.9)  # the lease (0.5 s) and its margin (0.3 s) are over
    assert await a.writer.checked_ack(bob, m0, y, frozenset({y}), None) == y

    await cluster.late_holder.commit()  # type: ignore[attr-defined]
    with pytest.raises(LeaseExpiredError):
        await late
    assert await stored_ids(a) == [m0, y]


def _fence(now: float) -> object:
    from qqchat.storage.positions import Fence

    fence = Fence()
    fence.refreshed(now, True, 15.0)
    return fence


def test_a_slots_log_writers_row_is_written_once_a_second_not_by_every_batch() -> None:
    """The row is for operators (the live positions go through Redis): a batch writes
    it only when its slot's row is a second old."""
    clock = task.Clock()
    positions = LogPositions("n1", clock)
    first = positions.begin()
    other = positions.begin()  # a second slot of its own
    assert first.record and other.record and first.slot != other.slot
    positions.end(first, 10)
    again = positions.begin()  # the first slot again, at once
    assert again.slot == first.slot and not again.record
    positions.end(again, 11)
    clock.advance(RECORD_EVERY)
    later = positions.begin()
    assert later.slot == first.slot and later.record
