"""The stores against a real MariaDB, with transactions of several daemons interleaved
on purpose.

Each daemon of a cluster has its own pool on the same database, so here each "node"
is a ``Stores`` over a pool of its own. Interleavings are forced with a plain
connection of the test's that holds a row lock (``Holder``), and the test waits for
the server to report a transaction as blocked (``Monitor``) before it takes the next
step: no step depends on timing.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_twisted
from mariadb_server import MariaDB
from twisted.enterprise import adbapi
from twisted.internet import defer, task, threads
from twisted.logger import globalLogPublisher

from qqchat.storage.engines import create_engine
from qqchat.storage.log import KIND_BROADCAST, KIND_DIRECT, CheckedAck, NewMessage
from qqchat.storage.pool import make_pool, parse_database_url
from qqchat.storage.schema import apply_schema
from qqchat.storage.stores import Stores

_names = itertools.count(1)


class Holder:
    """A connection of the test's own: takes locks and holds them until told."""

    def __init__(self, server: MariaDB, db: str) -> None:
        self.conn = server.connect(db)
        self.cursor = self.conn.cursor()
        self.cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        self.cursor.execute("SELECT CONNECTION_ID()")
        self.thread_id = int(self.cursor.fetchone()[0])

    def execute(self, sql: str, *params: Any) -> defer.Deferred[list[tuple[Any, ...]]]:
        """Run a statement in a thread: it may wait for a lock."""
        def run() -> list[tuple[Any, ...]]:
            self.cursor.execute(sql, params or None)
            return list(self.cursor.fetchall())
        return threads.deferToThread(run)

    def commit(self) -> defer.Deferred[None]:
        return threads.deferToThread(self.conn.commit)

    def close(self) -> None:
        self.conn.close()


class Monitor:
    """Reads which transactions wait for a lock, and on whom."""

    def __init__(self, server: MariaDB) -> None:
        self.conn = server.connect(autocommit=True)

    def _waits(self) -> list[tuple[int, int]]:
        cursor = self.conn.cursor()
        cursor.execute(
            "SELECT r.trx_mysql_thread_id, b.trx_mysql_thread_id"
            " FROM information_schema.INNODB_LOCK_WAITS w"
            " JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id"
            " JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id")
        return [(int(a), int(b)) for a, b in cursor.fetchall()]

    async def until(self, what: str, ready: Callable[[list[tuple[int, int]]], bool],
                    *done: defer.Deferred[Any]) -> None:
        """Wait until the (waiting, blocking) thread pairs satisfy ``ready``; give up
        early if one of ``done`` fired instead (the step did not wait at all)."""
        from twisted.internet import reactor

        for _ in range(200):
            if ready(await threads.deferToThread(self._waits)):
                return
            if any(d.called for d in done):
                return
            # the server refreshes these tables only when last read over 0.1 s ago
            await task.deferLater(reactor, 0.12, lambda: None)
        raise AssertionError(f"never saw {what}")

    def close(self) -> None:
        self.conn.close()


class Cluster:
    """One database; ``node()`` is one more daemon's store on it."""

    def __init__(self, server: MariaDB, db: str) -> None:
        self.server, self.db = server, db
        self.pools: list[adbapi.ConnectionPool] = []
        self.holders: list[Holder] = []
        self.monitor = Monitor(server)

    def node(self) -> Stores:
        from twisted.internet import reactor

        pool = make_pool(parse_database_url(self.server.url(self.db), pool_max=4), reactor)
        self.pools.append(pool)
        return Stores.open(pool, create_engine("mysql", pool.dbapi))

    def holder(self) -> Holder:
        h = Holder(self.server, self.db)
        self.holders.append(h)
        return h

    def close(self) -> None:
        for h in self.holders:
            h.close()
        self.monitor.close()
        for p in self.pools:
            p.close()


@pytest_twisted.async_yield_fixture
async def cluster(mariadb: MariaDB) -> AsyncIterator[Cluster]:
    db = f"qq_storage_{next(_names)}"
    mariadb.create_database(db)
    c = Cluster(mariadb, db)
    first = c.node()
    await first.message_log._pool.runInteraction(apply_schema, "mysql")
    yield c
    c.close()
    mariadb.drop_database(db)


async def new_users(store: Stores, *names: str) -> list[int]:
    ids = []
    for name in names:
        uid = await store.accounts.create_user(name, "h", 1)
        assert uid is not None
        ids.append(uid)
    return ids


async def direct(store: Stores, sender: int, to: int, text: str) -> int:
    (stored,) = await store.message_log.write_batch(
        [NewMessage(KIND_DIRECT, sender, text, recipient=to)], (), 1000)
    return stored.id


async def acked(store: Stores, uid: int) -> int:
    row = await store.message_log._one("SELECT acked FROM users WHERE id = ?", uid)
    assert row is not None
    return int(row[0])


def blocked_by(thread_id: int, count: int = 1) -> Callable[[list[tuple[int, int]]], bool]:
    return lambda waits: sum(1 for _, b in waits if b == thread_id) >= count


@pytest_twisted.ensureDeferred
async def test_checked_acks_of_two_nodes_in_opposite_orders_do_not_deadlock(
        cluster: Cluster) -> None:
    """Two nodes check acks of the same users, each in its own order: node 1 takes
    u1, then waits for u3 (held by the test); node 2 takes u2, then waits for u1.
    Once u3 is free node 1 wants u2: with rows locked in the order acks arrived
    that is a deadlock, and one node's acks failed as ``unavailable``."""
    node1, node2 = cluster.node(), cluster.node()
    sender, u1, u2, u3 = await new_users(node1, "sender", "u1", "u2", "u3")
    m = {u: await direct(node1, sender, u, f"to {u}") for u in (u1, u2, u3)}

    def check(uid: int) -> CheckedAck:
        return (uid, 0, m[uid], frozenset({m[uid]}), None)

    holder = cluster.holder()
    await holder.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", u3)
    first = node1.message_log.checked_acks([check(u1), check(u3), check(u2)])
    await cluster.monitor.until("node 1 waiting for u3", blocked_by(holder.thread_id), first)
    second = node2.message_log.checked_acks([check(u2), check(u1)])
    await cluster.monitor.until("node 2 waiting", lambda w: len(w) >= 2, first, second)
    await holder.commit()

    results = await defer.DeferredList([first, second], consumeErrors=True)
    assert [r[0] for r in results] == [True, True], [r[1] for r in results]
    assert results[0][1] == [m[u1], m[u3], m[u2]]
    assert results[1][1] == [m[u2], m[u1]]
    assert [await acked(node1, u) for u in (u1, u2, u3)] == [m[u1], m[u2], m[u3]]


@pytest_twisted.ensureDeferred
async def test_a_transaction_chosen_as_deadlock_victim_is_retried(cluster: Cluster) -> None:
    """A deadlock no lock order of ours rules out (here: another client takes the same
    rows the other way round, after changing many rows, so ours is the cheaper one to
    roll back) is retried, with a warning, instead of failing as ``unavailable``."""
    node = cluster.node()
    sender, u1, u2 = await new_users(node, "sender", "u1", "u2")
    padding = await new_users(node, *(f"pad{n}" for n in range(30)))
    m = {u: await direct(node, sender, u, f"to {u}") for u in (u1, u2)}
    warnings: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "deadlock" in str(event.get("log_format", "")).lower():
            warnings.append(event)

    holder = cluster.holder()
    await holder.execute("UPDATE users SET created_at = created_at + 1 WHERE id >= %s",
                         min(padding))
    await holder.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", u2)
    globalLogPublisher.addObserver(observe)
    try:
        checking = node.message_log.checked_acks([(u, 0, m[u], frozenset({m[u]}), None)
                                      for u in (u1, u2)])
        await cluster.monitor.until("the check waiting for u2", blocked_by(holder.thread_id),
                                    checking)
        await holder.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", u1)
        await holder.commit()
        result = await checking
    finally:
        globalLogPublisher.removeObserver(observe)
    assert result == [m[u1], m[u2]]
    assert len(warnings) == 1
    assert [await acked(node, u) for u in (u1, u2)] == [m[u1], m[u2]]


# -- a login and the acks of the login it replaces ----------------------------------


async def login(store: Stores, uid: int) -> tuple[int, list[int], int | None]:
    """What a login's backlog starts from: the acked position, the ids it will send,
    and the stamp that names the login."""
    start = await store.message_log.backlog_start(uid, 100, 5000)
    return start.acked, [r[0] for r in start.rows], start.login


def check_ack(store: Stores, uid: int, after: int, upto: int, seen: set[int],
              stamp: int | None) -> CheckedAck:
    return (uid, after, upto, frozenset(seen), stamp)


def confirmed_then_sent_again(reached: int, upto: int, backlog: list[int]) -> list[int]:
    """Messages a login sends although an ack confirmed them: the ack's reply says
    acknowledged (``reached == upto``) and the backlog, read before, still has them."""
    return [mid for mid in backlog if mid <= reached] if reached == upto else []


@pytest_twisted.ensureDeferred
async def test_an_ack_of_the_replaced_login_is_never_confirmed_for_what_the_new_one_sends(
        cluster: Cluster) -> None:
    """Bob is logged in on node A; he logs in again on node B, whose backlog read
    comes first; then node A writes the ack bob's old session sent. Confirming
    it would tell bob those messages are acknowledged while node B sends them to him
    again: the ack must not go through."""
    node_a, node_b = cluster.node(), cluster.node()
    alice, bob = await new_users(node_a, "alice", "bob")
    sent = [await direct(node_a, alice, bob, f"m{n}") for n in range(3)]
    _, on_a, stamp_a = await login(node_a, bob)
    assert on_a == sent
    _, on_b, _ = await login(node_b, bob)
    (reached,) = await node_a.message_log.checked_acks(
        [check_ack(node_a, bob, 0, sent[-1], set(sent), stamp_a)])
    assert confirmed_then_sent_again(reached, sent[-1], on_b) == []
    assert reached == 0 and await acked(node_a, bob) == 0  # nothing skipped either


@pytest_twisted.ensureDeferred
async def test_a_login_waits_for_an_ack_being_written_on_another_node(
        cluster: Cluster) -> None:
    """Node A's ack transaction for bob (and carol) is under way, bob's row taken and
    carol's waited for, when bob logs in on node B: the login's read waits for that
    transaction, then starts past what it acknowledged."""
    node_a, node_b = cluster.node(), cluster.node()
    alice, bob, carol = await new_users(node_a, "alice", "bob", "carol")
    to_bob = [await direct(node_a, alice, bob, f"m{n}") for n in range(3)]
    to_carol = await direct(node_a, alice, carol, "c")
    _, _, stamp_bob = await login(node_a, bob)
    _, _, stamp_carol = await login(node_a, carol)

    holder = cluster.holder()
    await holder.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", carol)
    checking = node_a.message_log.checked_acks([
        check_ack(node_a, bob, 0, to_bob[-1], set(to_bob), stamp_bob),
        check_ack(node_a, carol, 0, to_carol, {to_carol}, stamp_carol)])
    await cluster.monitor.until("the ack waiting for carol", blocked_by(holder.thread_id),
                                checking)
    logging_in = defer.ensureDeferred(login(node_b, bob))
    await cluster.monitor.until("the login waiting", lambda w: len(w) >= 2,
                                logging_in, checking)
    await holder.commit()
    reached, (_, on_b, _) = await checking, await logging_in
    assert confirmed_then_sent_again(reached[0], to_bob[-1], on_b) == []
    assert reached == [to_bob[-1], to_carol] and on_b == []


@pytest_twisted.ensureDeferred
async def test_a_new_account_starts_at_a_head_no_batch_commits_past_meanwhile(
        cluster: Cluster) -> None:
    """create_user reads the log head with the share lock join_group takes: a batch
    cannot commit between that read and the account's commit, so a broadcast reaches
    the new account exactly when it committed after the account did."""
    node_a, node_b = cluster.node(), cluster.node()
    (admin,) = await new_users(node_a, "admin")
    await node_a.message_log.write_batch([NewMessage(KIND_BROADCAST, admin, "before")], (), 1000)
    holder = cluster.holder()  # holds the name, so create_user waits after its head read
    await holder.execute("INSERT INTO users (name, pw_hash, created_at, name_key)"
                         " VALUES ('newbie', 'h', 1, 'newbie')")
    order: list[str] = []
    creating = node_a.accounts.create_user("newbie", "h", 2)
    creating.addCallback(lambda uid: (order.append("account"), uid)[1])
    await cluster.monitor.until("create_user waiting", blocked_by(holder.thread_id),
                                creating)
    batch = node_b.message_log.write_batch([NewMessage(KIND_BROADCAST, admin, "meanwhile")],
                                           (), 1000)
    batch.addCallback(lambda stored: (order.append("broadcast"), stored)[1])
    await cluster.monitor.until("the batch done or waiting", lambda w: len(w) >= 2,
                                batch, creating)
    await holder.execute("ROLLBACK")
    uid, (stored,) = await creating, await batch
    assert uid is not None
    start = await acked(node_a, uid)
    backlog = [r[0] for r in await node_a.message_log.undelivered(uid, start, 100)]
    assert (stored.id in backlog) == (order == ["account", "broadcast"]), (order, backlog)
