"""F7 end to end: nothing lost, nothing doubled, across drops and concurrent senders."""

from __future__ import annotations

import pytest_twisted
from conftest import Running
from twisted.internet import defer


@pytest_twisted.ensureDeferred
async def test_hundred_offline_messages_partial_ack_then_drop(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    await bob.ok("logout")
    sent = [(await alice.ok("chat", to=bob.user_id, text=f"n{i}"))["id"] for i in range(100)]

    _, backlog = await bob.login("bob", "password1")
    assert [m["id"] for m in backlog] == sent
    await bob.ok("ack", id=sent[39])
    bob.close()  # drops without logging out
    await bob.closed

    again = await server.client()
    _, backlog = await again.login("bob", "password1")
    assert [m["id"] for m in backlog] == sent[40:]
    assert [m["text"] for m in backlog] == [f"n{i}" for i in range(40, 100)]
    await again.ok("ack", id=sent[-1])
    again.close()
    await again.closed

    third = await server.client()
    _, backlog = await third.login("bob", "password1")
    assert backlog == []


@pytest_twisted.ensureDeferred
async def test_two_concurrent_senders_to_offline_user(server: Running) -> None:
    alice = await server.user("alice")
    carol = await server.user("carol")
    bob = await server.user("bob")
    await bob.ok("logout")

    async def stream(client, tag: str) -> list[int]:  # type: ignore[no-untyped-def]
        ids = []
        for i in range(50):
            ids.append((await client.ok("chat", to=bob.user_id, text=f"{tag}{i}"))["id"])
        return ids

    from_alice, from_carol = await defer.gatherResults([
        defer.Deferred.fromCoroutine(stream(alice, "a")),
        defer.Deferred.fromCoroutine(stream(carol, "c")),
    ])
    assert len(set(from_alice) | set(from_carol)) == 100

    _, backlog = await bob.login("bob", "password1")
    ids = [m["id"] for m in backlog]
    assert ids == sorted(from_alice + from_carol)
    # each sender's messages keep their send order
    assert [m["text"] for m in backlog if m["from"] == alice.user_id] == [
        f"a{i}" for i in range(50)]
    assert [m["text"] for m in backlog if m["from"] == carol.user_id] == [
        f"c{i}" for i in range(50)]
    await bob.ok("ack", id=ids[59])
    await bob.ok("logout")
    _, backlog = await bob.login("bob", "password1")
    assert [m["id"] for m in backlog] == ids[60:]


@pytest_twisted.ensureDeferred
async def test_messages_sent_during_login_backlog_arrive_once_in_order(server: Running
                                                                        ) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    await bob.ok("logout")
    before = [(await alice.ok("chat", to=bob.user_id, text=f"b{i}"))["id"] for i in range(300)]
    login = defer.Deferred.fromCoroutine(bob.ok("login", name="bob", password="password1"))
    during = [(await alice.ok("chat", to=bob.user_id, text=f"d{i}"))["id"] for i in range(20)]
    await login
    got = await bob.messages(len(before) + len(during), wait=20)
    assert [m["id"] for m in got] == before + during
    await bob.nothing_more("message")


@pytest_twisted.ensureDeferred
async def test_kicked_session_unacked_messages_go_to_the_new_one(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    sent = [(await alice.ok("chat", to=bob.user_id, text=f"k{i}"))["id"] for i in range(4)]
    await bob.messages(4)
    await bob.ok("ack", id=sent[1])
    new = await server.client()
    _, backlog = await new.login("bob", "password1")
    assert [m["id"] for m in backlog] == sent[2:]


@pytest_twisted.ensureDeferred
async def test_acks_written_in_one_batch_each_move_their_own_user(server: Running) -> None:
    """Acks that share a log batch (a group message's receivers ack at once) are
    written together, on MariaDB as one multi-statement: each user's position moves
    to its own ack, and nothing acked comes back at the next login."""
    alice = await server.user("alice")
    bob = await server.user("bob")
    carol = await server.user("carol")
    to_bob = [(await alice.ok("chat", to=bob.user_id, text=t))["id"] for t in ("b1", "b2")]
    to_carol = (await alice.ok("chat", to=carol.user_id, text="c1"))["id"]
    await bob.messages(2)
    await carol.messages(1)
    log = server.daemon.writer
    batches = log.batches
    await defer.gatherResults([log.ack(bob.user_id, to_bob[0]),
                               log.ack(carol.user_id, to_carol)])
    assert log.batches == batches + 1

    bob_again = await server.client()
    _, backlog = await bob_again.login("bob", "password1")
    assert [m["id"] for m in backlog] == [to_bob[1]]
    carol_again = await server.client()
    _, backlog = await carol_again.login("carol", "password1")
    assert backlog == []
