"""user_search, group_search and conversations (K3) against real SQL on the threadless
store, through the real Dispatcher."""

from __future__ import annotations

from typing import Any

import pytest
from unit_support import Client, Services, build_services

from qqchat.services.limits import Limits
from qqchat.storage.directory import UNREAD_MAX


def user(services: Services, name: str) -> Client:
    return Client(services).signup(name)


def error(reply: dict[str, Any] | None) -> str:
    assert reply is not None and reply["type"] == "error", reply
    return str(reply["code"])


def names(reply: dict[str, Any], key: str = "users") -> list[str]:
    return [u["name"] for u in reply[key]]


# -- user_search ------------------------------------------------------------


def test_user_search_is_a_case_insensitive_prefix_match(services: Services) -> None:
    me = user(services, "zed")
    for name in ["alice", "Alan", "albert", "bob", "ALINA"]:
        Client(services).register(name)
    reply = me.ok({"type": "user_search", "query": "al"})
    assert names(reply) == ["Alan", "albert", "alice", "ALINA"]
    assert reply["more"] is False
    assert names(me.ok({"type": "user_search", "query": "ALI"})) == ["alice", "ALINA"]
    assert names(me.ok({"type": "user_search", "query": "  bob "})) == ["bob"]
    assert me.ok({"type": "user_search", "query": "carol"})["users"] == []


def test_user_search_folds_fullwidth_and_unicode_case(services: Services) -> None:
    me = user(services, "zed")
    Client(services).register("Straße")
    Client(services).register("Ωμέγα")
    assert names(me.ok({"type": "user_search", "query": "STRASS"})) == ["Straße"]
    assert names(me.ok({"type": "user_search", "query": "ωμέ"})) == ["Ωμέγα"]
    assert names(me.ok({"type": "user_search", "query": "\uff33\uff54\uff52"})) == ["Straße"]


def test_user_search_pages_with_after(services: Services) -> None:
    me = user(services, "zed")
    for k in range(7):
        Client(services).register(f"user{k}")
    first = me.ok({"type": "user_search", "query": "user", "limit": 3})
    assert names(first) == ["user0", "user1", "user2"] and first["more"] is True
    second = me.ok({"type": "user_search", "query": "user", "limit": 3,
                    "after": first["users"][-1]["id"]})
    assert names(second) == ["user3", "user4", "user5"] and second["more"] is True
    third = me.ok({"type": "user_search", "query": "user", "limit": 3,
                   "after": second["users"][-1]["id"]})
    assert names(third) == ["user6"] and third["more"] is False


def test_user_search_by_id_and_online_only_for_friends(services: Services) -> None:
    me = user(services, "zed")
    friend = user(services, "amy")
    stranger = user(services, "ann")
    me.ok({"type": "friend_add", "to": friend.id})
    friend.ok({"type": "friend_accept", "from": me.id})
    reply = me.ok({"type": "user_search", "query": "a"})
    assert reply["users"] == [{"id": friend.id, "name": "amy", "friend": True, "online": True},
                              {"id": stranger.id, "name": "ann", "friend": False}]
    by_id = me.ok({"type": "user_search", "query": str(stranger.id)})
    assert by_id["users"] == [{"id": stranger.id, "name": "ann", "friend": False}]


@pytest.mark.parametrize("fields", [{"query": ""}, {"query": "   "}, {"query": "x" * 65},
                                    {"query": 5}, {"query": "a", "limit": 0},
                                    {"query": "a", "limit": 51}, {"query": "a", "after": -1}])
def test_user_search_refuses_bad_fields(services: Services, fields: dict[str, Any]) -> None:
    me = user(services, "zed")
    assert error(me.request({"type": "user_search", "req": 1, **fields})) == "bad_field"


def test_search_needs_login(services: Services) -> None:
    assert error(Client(services).request({"type": "user_search", "query": "a"})) \
        == "not_logged_in"


def test_searches_are_rate_limited_per_user(clock: Any) -> None:
    services = build_services(clock, Limits(search_rate=1.0, search_burst=3))
    try:
        me = user(services, "zed")
        for _ in range(3):
            me.ok({"type": "user_search", "query": "z"})
        reply = me.request({"type": "group_search", "query": "z", "req": 9})
        assert error(reply) == "rate_limited" and reply["retry_after"] > 0
        clock.advance(1.0)
        me.ok({"type": "user_search", "query": "z"})
    finally:
        services.close()


# -- group_search -----------------------------------------------------------


def test_group_search_by_prefix_and_by_id(services: Services) -> None:
    me = user(services, "zed")
    owner = user(services, "amy")
    devs = owner.ok({"type": "group_create", "name": "Devs", "desc": "our team"})["group"]
    owner.ok({"type": "group_create", "name": "design"})
    other = owner.ok({"type": "group_create", "name": "ops"})["group"]
    me.ok({"type": "group_join", "group": devs["id"]})
    reply = me.ok({"type": "group_search", "query": "de"})
    assert [(g["name"], g["members"], g["member"]) for g in reply["groups"]] == [
        ("design", 1, False), ("Devs", 2, True)]
    assert reply["groups"][1]["desc"] == "our team"
    for query in (str(other["id"]), f"g{other['id']}", f"G{other['id']}"):
        assert names(me.ok({"type": "group_search", "query": query}), "groups") == ["ops"]


# -- conversations -----------------------------------------------------------


def conversations(client: Client, **fields: Any) -> dict[str, Any]:
    return client.ok({"type": "conversations", **fields})


def ack_all(client: Client) -> None:
    ids = [f["id"] for f in client.conn.take() if f["type"] == "message"]
    if ids:
        client.ok({"type": "ack", "id": max(ids)})


def test_conversations_newest_first_with_last_message_and_unread(services: Services) -> None:
    alice, bob, carol = user(services, "alice"), user(services, "bob"), user(services, "carol")
    group = alice.ok({"type": "group_create", "name": "devs"})["group"]["id"]
    carol.ok({"type": "group_join", "group": group})
    bob.ok({"type": "chat", "to": alice.id, "text": "hi alice"})
    bob.ok({"type": "chat", "to": alice.id, "text": "are you there?"})
    carol.ok({"type": "group_chat", "group": group, "text": "standup in 5"})
    alice.ok({"type": "chat", "to": carol.id, "text": "x" * 150})
    page = conversations(alice)
    assert page["more"] is False
    got = [(c["kind"], c["name"], c["unread"], c["last"]["text"]) for c in
           page["conversations"]]
    assert got == [("direct", "carol", 0, "x" * 100),
                   ("group", "devs", 1, "standup in 5"),
                   ("direct", "bob", 2, "are you there?")]
    last = page["conversations"][2]["last"]
    assert last["from"] == bob.id and last["name"] == "bob" and last["id"] > 0
    ack_all(alice)
    assert [c["unread"] for c in conversations(alice)["conversations"]] == [0, 0, 0]
    # bob sees his side: alice is one conversation, nothing unread from her
    assert [(c["name"], c["unread"]) for c in conversations(bob)["conversations"]] == [
        ("alice", 0)]


def test_conversations_page_with_before(services: Services) -> None:
    me = user(services, "zed")
    peers = [user(services, f"peer{k}") for k in range(5)]
    for peer in peers:
        peer.ok({"type": "chat", "to": me.id, "text": f"from {peer.id}"})
    first = conversations(me, limit=2)
    assert [c["name"] for c in first["conversations"]] == ["peer4", "peer3"]
    assert first["more"] is True
    second = conversations(me, limit=2, before=first["conversations"][-1]["last"]["id"])
    assert [c["name"] for c in second["conversations"]] == ["peer2", "peer1"]
    third = conversations(me, limit=2, before=second["conversations"][-1]["last"]["id"])
    assert [c["name"] for c in third["conversations"]] == ["peer0"] and not third["more"]


def test_group_unread_counts_only_since_joining_and_not_own(services: Services) -> None:
    alice, bob = user(services, "alice"), user(services, "bob")
    group = alice.ok({"type": "group_create", "name": "devs"})["group"]["id"]
    alice.ok({"type": "group_chat", "group": group, "text": "before bob"})
    bob.ok({"type": "group_join", "group": group})
    alice.ok({"type": "group_chat", "group": group, "text": "welcome bob"})
    bob.ok({"type": "group_chat", "group": group, "text": "thanks"})
    [entry] = conversations(bob)["conversations"]
    assert entry["unread"] == 1 and entry["last"]["text"] == "thanks"
    [mine] = conversations(alice)["conversations"]
    assert mine["unread"] == 1  # bob's "thanks"; her own do not count


def test_unread_count_stops_at_the_cap(clock: Any) -> None:
    services = build_services(clock, Limits(send_rate=0))
    try:
        alice, bob = user(services, "alice"), user(services, "bob")
        for k in range(UNREAD_MAX + 5):
            bob.ok({"type": "chat", "to": alice.id, "text": f"m{k}"})
        [entry] = conversations(alice)["conversations"]
        assert entry["unread"] == UNREAD_MAX
    finally:
        services.close()


def test_note_to_self_is_one_conversation_never_unread(services: Services) -> None:
    me = user(services, "zed")
    me.ok({"type": "chat", "to": me.id, "text": "remember the milk"})
    [entry] = conversations(me)["conversations"]
    assert (entry["kind"], entry["id"], entry["unread"]) == ("direct", me.id, 0)
