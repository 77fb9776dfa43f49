"""Search, session tokens and the conversation list (K3) over TCP, on SQLite and MariaDB."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from chatclient import ChatClient
from conftest import Running


async def resume(server: Running, token: str) -> tuple[ChatClient, dict[str, Any], int]:
    """Log in by token on a new connection; returns the client, reply and backlog size."""
    c = await server.client()
    reply = await c.call("login", token=token)
    if reply["type"] == "error":
        return c, reply, 0
    c.user_id = reply["user"]["id"]
    synced = await c.push("synced")
    return c, reply, synced["count"]


@pytest_twisted.ensureDeferred
async def test_find_an_offline_user_by_name_and_befriend_them(server: Running) -> None:
    alice = await server.user("Alice")
    await alice.ok("logout")
    bob = await server.user("bob")
    found = await bob.ok("user_search", query="ali")
    assert found["users"] == [{"id": alice.user_id, "name": "Alice", "friend": False}]
    await bob.ok("friend_add", to=found["users"][0]["id"])
    await alice.login("Alice", "password1")
    await alice.ok("friend_accept", **{"from": bob.user_id})
    again = await bob.ok("user_search", query="ALICE")
    assert again["users"] == [{"id": alice.user_id, "name": "Alice", "friend": True,
                               "online": True}]


@pytest_twisted.ensureDeferred
async def test_find_a_group_by_name_or_id_and_join(server: Running) -> None:
    owner = await server.user("owner")
    group = (await owner.ok("group_create", name="Rust 中文", desc="all things rust"))["group"]
    joiner = await server.user("joiner")
    by_name = await joiner.ok("group_search", query="rust")
    assert by_name["groups"] == [{"id": group["id"], "name": "Rust 中文",
                                  "desc": "all things rust", "members": 1, "member": False}]
    by_id = await joiner.ok("group_search", query=f"g{group['id']}")
    assert [g["id"] for g in by_id["groups"]] == [group["id"]]
    await joiner.ok("group_join", group=group["id"])
    assert (await joiner.ok("group_search", query="rust"))["groups"][0]["member"] is True


@pytest_twisted.ensureDeferred
async def test_token_resumes_after_reconnect_and_dies_at_logout(server: Running) -> None:
    c = await server.client()
    await c.ok("register", name="alice", password="password1")
    reply = await c.ok("login", name="alice", password="password1", remember=True)
    token = reply["token"]
    await c.push("synced")
    bob = await server.user("bob")
    c.close()
    await c.closed
    sent = await bob.ok("chat", to=reply["user"]["id"], text="while you were away")
    again, resumed, backlog = await resume(server, token)
    assert resumed["user"] == reply["user"] and resumed["token"] == token
    assert backlog == 1
    assert (again.take_pushes("message")[0]["id"]) == sent["id"]
    await again.ok("logout")
    _, refused, _ = await resume(server, token)
    assert refused["code"] == "bad_token"


@pytest_twisted.ensureDeferred
async def test_password_change_ends_other_tokens(server: Running) -> None:
    c = await server.client()
    await c.ok("register", name="alice", password="password1")
    old = (await c.ok("login", name="alice", password="password1", remember=True))["token"]
    await c.push("synced")
    changed = await c.ok("password_change", old="password1", new="password2")
    assert changed["token"] != old
    assert (await c.ok("ping"))["type"] == "pong"
    await c.ok("logout")
    _, refused, _ = await resume(server, old)
    assert refused["code"] == "bad_token"
    assert (await c.call("login", name="alice", password="password1"))["code"] \
        == "bad_credentials"
    await c.login("alice", "password2")


@pytest_twisted.ensureDeferred
async def test_conversation_list_with_unread_counts(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    carol = await server.user("carol")
    gid = (await alice.ok("group_create", name="devs"))["group"]["id"]
    await carol.ok("group_join", group=gid)
    await bob.ok("chat", to=alice.user_id, text="one")
    await bob.ok("chat", to=alice.user_id, text="two")
    await carol.ok("group_chat", group=gid, text="standup")
    got = await alice.messages(3)
    page = await alice.ok("conversations")
    assert [(c["kind"], c["name"], c["unread"], c["last"]["text"])
            for c in page["conversations"]] == [("group", "devs", 1, "standup"),
                                                ("direct", "bob", 2, "two")]
    await alice.ok("ack", id=got[-1]["id"])
    page = await alice.ok("conversations", limit=1)
    assert page["more"] is True and page["conversations"][0]["unread"] == 0
    rest = await alice.ok("conversations", before=page["conversations"][0]["last"]["id"])
    assert [c["name"] for c in rest["conversations"]] == ["bob"] and rest["more"] is False
