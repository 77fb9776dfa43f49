"""Flow control and graceful stop: slow readers, in-flight requests at shutdown."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from chatclient import connect, pause
from conftest import Running, start_daemon
from twisted.internet import defer

from qqchat.app import Settings


@pytest.mark.settings(max_send_buffer=64 * 1024)
@pytest_twisted.ensureDeferred
async def test_client_that_does_not_read_is_cut_off_and_loses_nothing(server: Running
                                                                       ) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    # bob's client stops reading its socket, and its kernel buffer is small
    bob.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    bob.transport.pauseProducing()
    text = "y" * 3900
    sent = []
    for n in range(3000):  # ~12 MB: far past the kernel's buffers plus the cap
        reply = await alice.ok("chat", to=bob.user_id, text=f"{n} {text}")
        sent.append(reply["id"])
    # the server gave up on bob (he is offline now), and alice was never held up
    online = await alice.ok("who")
    assert [u["name"] for u in online["users"]] == ["alice"]
    bob.transport.resumeProducing()
    await bob.closed
    assert (await alice.ok("ping"))["type"] == "pong"

    again = await server.client()
    await again.ok("login", name="bob", password="password1")
    got = await again.messages(len(sent), wait=30)
    received_before = [f["id"] for f in bob.pushes if f.get("type") == "message"]
    # everything sent is delivered after the reconnect, unless it already had arrived
    assert [m["id"] for m in got] == sent
    assert set(received_before) <= set(sent)


@pytest.mark.settings(max_send_buffer=16 * 1024 * 1024)
@pytest_twisted.ensureDeferred
async def test_pushes_queued_behind_a_slow_reader_arrive_in_order(server: Running) -> None:
    """A reader that pauses, under the cap: once the kernel's buffers are full the
    pushes wait in the server's buffer for it, and the ones after them queue behind
    them there instead of overtaking them on the socket."""
    alice = await server.user("alice")
    bob = await server.user("bob")
    (conn,) = [c for c in server.daemon.listener.factory.live
               if c.session.user_id == bob.user_id]
    # the server's side of bob's connection keeps a small kernel buffer
    conn.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    bob.transport.pauseProducing()
    text = "z" * 3900
    sent = []
    for n in range(300):  # ~1.2 MB: past the kernels' buffers, within the cap
        reply = await alice.ok("chat", to=bob.user_id, text=f"{n} {text}")
        sent.append(reply["id"])
    assert conn.transport.dataBuffer or conn.transport._tempDataBuffer  # some wait here
    bob.transport.resumeProducing()
    got = await bob.messages(len(sent), wait=30)
    assert [m["id"] for m in got] == sent
    assert [m["text"].split()[0] for m in got] == [str(n) for n in range(300)]
    await bob.nothing_more()


@pytest_twisted.ensureDeferred
async def test_graceful_stop_answers_requests_in_hand(db_url: str) -> None:
    from twisted.internet import reactor

    daemon, port = await start_daemon(Settings(listen="tcp:0:interface=127.0.0.1",
                                               db=db_url, hash_cost=4))
    c = await connect(port)
    await c.ok("register", name="alice", password="password1")
    await c.login("alice", "password1")
    replies = [defer.Deferred.fromCoroutine(c.call("chat", to=c.user_id, text=f"last {n}"))
               for n in range(20)]
    await defer.DeferredList(replies[:1])  # the server is busy with the pipeline now
    stopping = defer.maybeDeferred(daemon.stopService)
    await stopping.addTimeout(20, reactor)
    done = await defer.DeferredList(replies, consumeErrors=True)
    answered = [r for ok, r in done if ok and r["type"] == "chat"]
    assert answered, done
    # requests not yet read when the stop began were never taken: no reply, no message
    assert all(not ok for ok, _ in done[len(answered):])
    assert c.frames[-1] == {"type": "server_shutdown"}
    await c.closed

    # every message whose reply was sent is stored
    daemon, port = await start_daemon(Settings(listen="tcp:0:interface=127.0.0.1",
                                               db=db_url, hash_cost=4))
    try:
        again = await connect(port)
        await again.ok("login", name="alice", password="password1")
        history = await again.ok("history", **{"with": c.user_id, "limit": 50})
        stored = [m["id"] for m in history["messages"]]
        assert stored == [r["id"] for r in answered]
        again.close()
    finally:
        await defer.maybeDeferred(daemon.stopService).addTimeout(20, reactor)


@pytest.mark.settings(rate_limit=5, rate_burst=5)
@pytest_twisted.ensureDeferred
async def test_flooding_client_is_rate_limited_and_others_are_not(server: Running) -> None:
    flood = await server.user("flood")
    calm = await server.user("calm")
    replies = await defer.gatherResults([
        defer.Deferred.fromCoroutine(flood.call("ping", req=f"p{n}")) for n in range(12)])
    kinds = [r["type"] if r["type"] == "pong" else r["code"] for r in replies]
    # the burst (less the register and login already spent) is served, the rest refused
    pongs = kinds.count("pong")
    assert pongs >= 1 and kinds == ["pong"] * pongs + ["rate_limited"] * (12 - pongs)
    assert pongs <= 5
    limited = next(r for r in replies if r["type"] == "error")
    assert limited["retry_after"] > 0 and limited["req"].startswith("p")
    assert (await calm.ok("ping"))["type"] == "pong"
    # retry_after is a promise: once that long has passed, the next request is served
    await pause(limited["retry_after"])
    assert (await flood.ok("ping"))["type"] == "pong"
