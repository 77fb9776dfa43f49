"""One-to-one chat, broadcast, acks, idempotent sends and history (F6-F8, F11), over TCP."""

from __future__ import annotations

import pytest_twisted
from conftest import Running


@pytest_twisted.ensureDeferred
async def test_chat_to_online_user_is_pushed_with_id_and_time(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    reply = await alice.ok("chat", to=bob.user_id, text="hello bob")
    msg = await bob.push("message")
    assert msg == {"type": "message", "id": reply["id"], "from": alice.user_id,
                   "name": "alice", "text": "hello bob", "ts": reply["ts"], "to": bob.user_id}


@pytest_twisted.ensureDeferred
async def test_the_sender_is_the_session_user_whatever_the_request_says(server: Running
                                                                         ) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    await alice.ok("chat", to=bob.user_id, text="hi", **{"from": bob.user_id, "id": 77})
    msg = await bob.push("message")
    assert msg["from"] == alice.user_id and msg["name"] == "alice"


@pytest_twisted.ensureDeferred
async def test_offline_messages_arrive_at_login_in_order(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    await bob.ok("logout")
    sent = [(await alice.ok("chat", to=bob.user_id, text=f"m{i}"))["id"] for i in range(5)]
    _, backlog = await bob.login("bob", "password1")
    assert [m["id"] for m in backlog] == sent
    assert [m["text"] for m in backlog] == [f"m{i}" for i in range(5)]


@pytest_twisted.ensureDeferred
async def test_unacked_messages_come_again_acked_ones_never(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    ids = [(await alice.ok("chat", to=bob.user_id, text=f"m{i}"))["id"] for i in range(3)]
    got = await bob.messages(3)
    assert [m["id"] for m in got] == ids
    await bob.ok("ack", id=ids[0])
    await bob.ok("logout")
    _, backlog = await bob.login("bob", "password1")
    assert [m["id"] for m in backlog] == ids[1:]
    await bob.ok("ack", id=ids[2])
    await bob.ok("logout")
    _, backlog = await bob.login("bob", "password1")
    assert backlog == []


@pytest_twisted.ensureDeferred
async def test_ack_of_an_undelivered_id_is_refused(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    sent = await alice.ok("chat", to=bob.user_id, text="one")
    await bob.push("message")
    refused = await bob.call("ack", id=sent["id"] + 1000)
    assert refused["code"] == "bad_ack"
    await bob.ok("logout")
    _, backlog = await bob.login("bob", "password1")
    assert [m["id"] for m in backlog] == [sent["id"]]


@pytest_twisted.ensureDeferred
async def test_retried_send_with_same_cid_is_stored_and_delivered_once(server: Running
                                                                        ) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    first = await alice.ok("chat", to=bob.user_id, text="once", cid="c-1")
    again = await alice.ok("chat", to=bob.user_id, text="once", cid="c-1")
    assert again["id"] == first["id"] and again["ts"] == first["ts"]
    assert again.get("duplicate") is True and "duplicate" not in first
    other = await alice.ok("chat", to=bob.user_id, text="twice", cid="c-2")
    got = await bob.messages(2)
    assert [m["id"] for m in got] == [first["id"], other["id"]]
    await bob.nothing_more("message")


@pytest_twisted.ensureDeferred
async def test_chat_errors(server: Running) -> None:
    alice = await server.user("alice")
    assert (await alice.call("chat", to=4242, text="x"))["code"] == "no_such_user"
    assert (await alice.call("chat", to=alice.user_id, text="  "))["code"] == "empty_text"
    assert (await alice.call("chat", to=alice.user_id, text="x" * 4001))["code"] == "too_long"
    assert (await alice.call("chat", to="bob", text="x"))["code"] == "bad_field"
    assert (await alice.call("chat", text="x"))["code"] == "missing_field"


@pytest_twisted.ensureDeferred
async def test_broadcast_reaches_online_now_and_offline_at_login(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    carol = await server.user("carol")
    await carol.ok("logout")
    sent = await alice.ok("broadcast", text="hello all")
    msg = await bob.push("message")
    assert msg["broadcast"] is True and msg["id"] == sent["id"] and msg["text"] == "hello all"
    _, backlog = await carol.login("carol", "password1")
    assert [m["id"] for m in backlog] == [sent["id"]]
    await alice.nothing_more("message")  # not echoed to the sender
    # users registered later do not get older broadcasts: not in the login backlog
    # (where an old broadcast would come), nor pushed after it
    dave = await server.client()
    await dave.ok("register", name="dave", password="password1")
    _, backlog = await dave.login("dave", "password1")
    assert backlog == []
    await dave.nothing_more("message")


@pytest_twisted.ensureDeferred
async def test_history_pages_backwards(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    carol = await server.user("carol")
    ids = []
    for i in range(7):
        sender, to = (alice, bob) if i % 2 == 0 else (bob, alice)
        ids.append((await sender.ok("chat", to=to.user_id, text=f"t{i}"))["id"])
    await carol.ok("chat", to=alice.user_id, text="not in this conversation")
    page1 = await alice.ok("history", **{"with": bob.user_id, "limit": 3})
    assert [m["id"] for m in page1["messages"]] == ids[4:]
    assert page1["more"] is True
    page2 = await alice.ok("history", **{"with": bob.user_id, "limit": 3,
                                         "before": page1["messages"][0]["id"]})
    assert [m["id"] for m in page2["messages"]] == ids[1:4]
    page3 = await bob.ok("history", **{"with": alice.user_id, "limit": 3,
                                       "before": page2["messages"][0]["id"]})
    assert [m["id"] for m in page3["messages"]] == ids[:1] and page3["more"] is False
    assert (await alice.call("history", limit=3))["code"] == "missing_field"
    assert (await alice.call("history", **{"with": bob.user_id, "limit": 0}))["code"] == \
        "bad_field"


@pytest_twisted.ensureDeferred
async def test_notes_to_self_appear_once_in_history(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    ids = [(await alice.ok("chat", to=alice.user_id, text=f"note {n}"))["id"]
           for n in range(3)]
    await alice.ok("chat", to=bob.user_id, text="not a note")
    page = await alice.ok("history", **{"with": alice.user_id, "limit": 10})
    assert [(m["id"], m["text"]) for m in page["messages"]] == \
        [(i, f"note {n}") for n, i in enumerate(ids)]

@pytest_twisted.ensureDeferred
async def test_cids_are_compared_exactly(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    ids = [(await alice.ok("chat", to=bob.user_id, text=f"t{n}", cid=cid))["id"]
           for n, cid in enumerate(["x", "x ", "X", 7, "7"])]
    # "x", "x " and "X" differ; 7 and "7" are the same client id
    assert len(set(ids[:4])) == 4 and ids[4] == ids[3]
    got = await bob.messages(4)
    assert [m["text"] for m in got] == ["t0", "t1", "t2", "t3"]
