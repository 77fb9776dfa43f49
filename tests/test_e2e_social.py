"""Friends and groups (F9, F10), over TCP, on both databases."""

from __future__ import annotations

import pytest_twisted
from conftest import Running


@pytest_twisted.ensureDeferred
async def test_friend_request_accept_remove(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    sent = await alice.ok("friend_add", to=bob.user_id)
    assert sent["status"] == "requested"
    request = await bob.push("friend_request")
    assert (request["from"], request["name"]) == (alice.user_id, "alice")

    accepted = await bob.ok("friend_accept", **{"from": alice.user_id})
    assert accepted["friend"] == {"id": alice.user_id, "name": "alice", "online": True}
    told = await alice.push("friend_added")
    assert (told["user"], told["name"]) == (bob.user_id, "bob")
    assert (await alice.ok("friends"))["friends"] == [
        {"id": bob.user_id, "name": "bob", "online": True}]
    assert (await bob.ok("friends"))["friends"] == [
        {"id": alice.user_id, "name": "alice", "online": True}]
    assert (await alice.call("friend_add", to=bob.user_id))["code"] == "already_friends"

    await alice.ok("friend_remove", id=bob.user_id)
    removed = await bob.push("friend_removed")
    assert removed["user"] == alice.user_id
    assert (await bob.ok("friends"))["friends"] == []
    assert (await bob.call("friend_remove", id=alice.user_id))["code"] == "not_friend"


@pytest_twisted.ensureDeferred
async def test_friend_request_to_offline_user_shows_at_login_and_decline(server: Running
                                                                          ) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    await bob.ok("logout")
    await alice.ok("friend_add", to=bob.user_id)
    reply, _ = await bob.login("bob", "password1")
    assert [r["from"] for r in reply["requests"]] == [alice.user_id]
    await bob.ok("friend_decline", **{"from": alice.user_id})
    declined = await alice.push("friend_declined")
    assert declined["user"] == bob.user_id
    assert (await bob.call("friend_accept", **{"from": alice.user_id}))["code"] == "no_request"
    await bob.ok("logout")
    reply, _ = await bob.login("bob", "password1")
    assert reply["requests"] == []


@pytest_twisted.ensureDeferred
async def test_crossed_requests_make_friends(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    await alice.ok("friend_add", to=bob.user_id)
    crossed = await bob.ok("friend_add", to=alice.user_id)
    assert crossed["status"] == "accepted"
    await alice.push("friend_added")
    assert [f["id"] for f in (await alice.ok("friends"))["friends"]] == [bob.user_id]


@pytest_twisted.ensureDeferred
async def test_friend_errors(server: Running) -> None:
    alice = await server.user("alice")
    assert (await alice.call("friend_add", to=alice.user_id))["code"] == "is_self"
    assert (await alice.call("friend_add", to=9999))["code"] == "no_such_user"
    assert (await alice.call("friend_decline", **{"from": 9999}))["code"] == "no_such_user"


@pytest_twisted.ensureDeferred
async def test_group_lifecycle_and_group_chat(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    carol = await server.user("carol")
    created = (await alice.ok("group_create", name="team", desc="our team"))["group"]
    gid = created["id"]
    assert created["members"] == [{"id": alice.user_id, "name": "alice", "role": "creator",
                                   "online": True}]
    joined = (await bob.ok("group_join", group=gid))["group"]
    assert [(m["name"], m["role"]) for m in joined["members"]] == [
        ("alice", "creator"), ("bob", "member")]
    note = await alice.push("group_joined")
    assert (note["group"], note["user"]) == (gid, bob.user_id)
    assert (await bob.call("group_join", group=gid))["code"] == "already_member"

    # a non-member cannot send, and nothing is stored or pushed
    assert (await carol.call("group_chat", group=gid, text="let me in"))["code"] == \
        "not_member"
    sent = await alice.ok("group_chat", group=gid, text="hello team")
    msg = await bob.push("message")
    assert (msg["id"], msg["group"], msg["from"], msg["text"]) == (
        sent["id"], gid, alice.user_id, "hello team")
    await alice.nothing_more("message")
    await carol.nothing_more("message")

    info = (await carol.ok("group_info", group=gid))["group"]
    assert (info["name"], info["desc"], info["creator"]) == ("team", "our team", alice.user_id)
    assert [(m["id"], m["online"]) for m in info["members"]] == [
        (alice.user_id, True), (bob.user_id, True)]
    mine = (await bob.ok("groups"))["groups"]
    assert [(g["id"], g["role"]) for g in mine] == [(gid, "member")]

    await bob.ok("group_leave", group=gid)
    left = await alice.push("group_left")
    assert left["user"] == bob.user_id
    assert (await bob.call("group_chat", group=gid, text="x"))["code"] == "not_member"
    assert (await bob.call("group_leave", group=gid))["code"] == "not_member"
    assert (await bob.ok("groups"))["groups"] == []


@pytest_twisted.ensureDeferred
async def test_group_message_stored_once_reaches_offline_members_at_login(server: Running
                                                                          ) -> None:
    alice = await server.user("alice")
    members = [await server.user(f"m{i}") for i in range(3)]
    gid = (await alice.ok("group_create", name="g"))["group"]["id"]
    for m in members:
        await m.ok("group_join", group=gid)
    await members[0].ok("logout")
    await members[1].ok("logout")
    sent = await alice.ok("group_chat", group=gid, text="while you were away")
    live = await members[2].push("message", match=lambda f: "group" in f)
    assert live["id"] == sent["id"]
    for m, name in zip(members[:2], ["m0", "m1"], strict=True):
        _, backlog = await m.login(name, "password1")
        assert [(b["id"], b["group"]) for b in backlog] == [(sent["id"], gid)]
    history = await members[0].ok("history", group=gid)
    assert [h["id"] for h in history["messages"]] == [sent["id"]]


@pytest_twisted.ensureDeferred
async def test_late_joiner_gets_only_later_group_messages(server: Running) -> None:
    alice = await server.user("alice")
    gid = (await alice.ok("group_create", name="g"))["group"]["id"]
    await alice.ok("group_chat", group=gid, text="before")
    bob = await server.user("bob")
    await bob.ok("group_join", group=gid)
    await bob.ok("logout")
    after = await alice.ok("group_chat", group=gid, text="after")
    _, backlog = await bob.login("bob", "password1")
    assert [m["id"] for m in backlog] == [after["id"]]


@pytest_twisted.ensureDeferred
async def test_group_errors(server: Running) -> None:
    alice = await server.user("alice")
    for typ in ["group_join", "group_leave", "group_info"]:
        assert (await alice.call(typ, group=777))["code"] == "no_such_group"
    assert (await alice.call("group_chat", group=777, text="x"))["code"] == "no_such_group"
    assert (await alice.call("history", group=777))["code"] == "no_such_group"
    assert (await alice.call("group_create", name=" "))["code"] == "bad_name"
    assert (await alice.call("group_create", name="g", desc="d" * 300))["code"] == "too_long"
    other = (await (await server.user("bob")).ok("group_create", name="theirs"))["group"]
    assert (await alice.call("history", group=other["id"]))["code"] == "not_member"
