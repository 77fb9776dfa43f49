"""Register, login, logout, the one-session rule and the online list (F1-F5), over TCP."""

from __future__ import annotations

import pytest
import pytest_twisted
from chatclient import ServerError, wait_for
from conftest import Running


@pytest_twisted.ensureDeferred
async def test_register_then_login_by_name_and_by_id(server: Running) -> None:
    c = await server.client()
    reg = await c.ok("register", name="alice", password="secret-1")
    assert reg["name"] == "alice" and isinstance(reg["id"], int)
    reply, backlog = await c.login("alice", "secret-1")
    assert reply["user"] == {"id": reg["id"], "name": "alice"}
    assert reply["friends"] == [] and reply["groups"] == [] and reply["requests"] == []
    assert backlog == []
    await c.ok("logout")
    by_id = await c.ok("login", id=reg["id"], password="secret-1")
    assert by_id["user"]["name"] == "alice"


@pytest_twisted.ensureDeferred
async def test_register_rules(server: Running) -> None:
    c = await server.client()
    await c.ok("register", name="alice", password="secret-1")
    taken = await c.call("register", name="alice", password="other-pass")
    assert taken["code"] == "name_taken"
    for bad in ["", "has space", "12345", "x" * 33, "a/b"]:
        assert (await c.call("register", name=bad, password="secret-1"))["code"] == "bad_name"
    assert (await c.call("register", name="bob", password="short"))["code"] == "weak_password"
    ok = await c.ok("register", name="张伟", password="secret-1")
    assert ok["name"] == "张伟"


@pytest_twisted.ensureDeferred
async def test_bad_credentials_do_not_say_which_part_was_wrong(server: Running) -> None:
    c = await server.client()
    await c.ok("register", name="alice", password="secret-1")
    wrong_pw = await c.call("login", name="alice", password="wrong-pass")
    no_user = await c.call("login", name="nobody", password="secret-1")
    no_id = await c.call("login", id=999, password="secret-1")
    assert wrong_pw["code"] == no_user["code"] == no_id["code"] == "bad_credentials"
    assert wrong_pw["message"] == no_user["message"]
    # the connection is still usable
    await c.login("alice", "secret-1")


@pytest_twisted.ensureDeferred
async def test_requests_before_login_are_refused(server: Running) -> None:
    c = await server.client()
    for typ, fields in [("chat", {"to": 1, "text": "hi"}), ("who", {}), ("friends", {}),
                        ("logout", {}), ("groups", {})]:
        assert (await c.call(typ, **fields))["code"] == "not_logged_in"
    assert (await c.ok("ping"))["type"] == "pong"


@pytest_twisted.ensureDeferred
async def test_second_login_on_one_connection_is_refused(server: Running) -> None:
    a = await server.user("alice")
    await a.ok("register", name="bob", password="password1")
    again = await a.call("login", name="bob", password="password1")
    assert again["code"] == "already_logged_in"


@pytest_twisted.ensureDeferred
async def test_new_login_kicks_the_old_session(server: Running) -> None:
    first = await server.user("alice")
    second = await server.client()
    await second.login("alice", "password1")
    kicked = await first.push("kicked")
    assert kicked["reason"]
    await first.closed
    # the new session is the one that works
    assert (await second.ok("who"))["total"] == 1


@pytest.mark.settings(kick_on_duplicate=False)
@pytest_twisted.ensureDeferred
async def test_reject_policy_refuses_the_new_login(server: Running) -> None:
    first = await server.user("alice")
    second = await server.client()
    refused = await second.call("login", name="alice", password="password1")
    assert refused["code"] == "already_online"
    assert (await first.ok("ping"))["type"] == "pong"


@pytest_twisted.ensureDeferred
async def test_who_lists_online_users_with_paging(server: Running) -> None:
    names = [f"user{i}" for i in range(5)]
    clients = [await server.user(n) for n in names]
    everyone = await clients[0].ok("who")
    assert everyone["total"] == 5
    assert [u["name"] for u in everyone["users"]] == names
    page = await clients[0].ok("who", limit=2, offset=2)
    assert [u["name"] for u in page["users"]] == names[2:4]
    await clients[4].ok("logout")
    clients[3].close()
    await clients[3].closed

    # the server learns of the drop when its side of the socket closes: ask until then
    async def only_three_left() -> bool:
        after = await clients[0].ok("who")
        return [u["name"] for u in after["users"]] == names[:3]

    await wait_for(only_three_left, "the online list to lose user3 and user4", timeout=5)


@pytest_twisted.ensureDeferred
async def test_logout_and_drop_tell_friends(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    await alice.ok("friend_add", to=bob.user_id)
    await bob.push("friend_request")
    await bob.ok("friend_accept", **{"from": alice.user_id})
    await alice.push("friend_added")

    await bob.ok("logout")
    off = await alice.push("presence")
    assert off == {"type": "presence", "user": bob.user_id, "name": "bob", "online": False}
    await bob.login("bob", "password1")
    on = await alice.push("presence")
    assert on["online"] is True and on["user"] == bob.user_id
    bob.close()
    dropped = await alice.push("presence")
    assert dropped["online"] is False


@pytest_twisted.ensureDeferred
async def test_logout_keeps_the_connection_for_a_new_login(server: Running) -> None:
    c = await server.user("alice")
    await c.ok("register", name="bob", password="password1")
    await c.ok("logout")
    assert (await c.call("who"))["code"] == "not_logged_in"
    reply, _ = await c.login("bob", "password1")
    assert reply["user"]["name"] == "bob"


@pytest_twisted.ensureDeferred
async def test_login_reply_carries_friends_groups_and_requests(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    carol = await server.user("carol")
    await alice.ok("friend_add", to=bob.user_id)
    await bob.ok("friend_accept", **{"from": alice.user_id})
    await carol.ok("friend_add", to=alice.user_id)
    group = (await alice.ok("group_create", name="team", desc="the team"))["group"]
    await bob.ok("group_join", group=group["id"])
    await alice.ok("logout")

    reply, _ = await alice.login("alice", "password1")
    assert reply["friends"] == [{"id": bob.user_id, "name": "bob", "online": True}]
    assert reply["requests"][0]["from"] == carol.user_id
    assert reply["requests"][0]["name"] == "carol"
    [g] = reply["groups"]
    assert (g["id"], g["name"], g["desc"], g["role"]) == (group["id"], "team", "the team",
                                                          "creator")
    assert [(m["name"], m["role"], m["online"]) for m in g["members"]] == [
        ("alice", "creator", True), ("bob", "member", True)]


@pytest_twisted.ensureDeferred
async def test_server_error_type_is_raised_by_ok(server: Running) -> None:
    c = await server.client()
    with pytest.raises(ServerError) as info:
        await c.ok("login", name="x", password="y" * 8)
    assert info.value.code == "bad_credentials"
