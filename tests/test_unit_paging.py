"""Bounded per-user collections and paged lists (R8): caps on groups created and
joined, and the login reply, ``friends``, ``groups`` and ``group_info`` members in
pages."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import task
from unit_support import Client, Services, build_services

from qqchat.services.limits import Limits


def error(reply: dict[str, Any] | None) -> str:
    assert reply is not None and reply["type"] == "error", reply
    return str(reply["code"])


@pytest.fixture
def small(clock: task.Clock) -> Any:
    services = build_services(clock, Limits(
        send_rate=0, register_rate=0, groups_created_max=3, groups_joined_max=5,
        groups_page=2, members_preview=2, friends_page=2))
    yield services
    services.close()


def test_groups_a_user_may_create_are_capped(small: Services) -> None:
    alice = Client(small).signup("alice")
    for k in range(3):
        alice.ok({"type": "group_create", "name": f"g{k}"})
    reply = alice.request({"type": "group_create", "name": "one too many", "req": 1})
    assert error(reply) == "too_many_groups_created"
    assert len(alice.ok({"type": "groups", "limit": 50})["groups"]) == 3


def test_groups_a_user_may_belong_to_are_capped(small: Services) -> None:
    owners = [Client(small).signup(f"owner{k}") for k in range(3)]
    gids = [o.ok({"type": "group_create", "name": f"g{i}{k}"})["group"]["id"]
            for k, o in enumerate(owners) for i in range(2)]
    bob = Client(small).signup("bob")
    for gid in gids[:5]:
        bob.ok({"type": "group_join", "group": gid})
    assert error(bob.request({"type": "group_join", "group": gids[5], "req": 1})) \
        == "too_many_groups"
    # creating one makes you a member too: also refused at the cap
    assert error(bob.request({"type": "group_create", "name": "mine", "req": 2})) \
        == "too_many_groups"


def test_login_reply_carries_first_pages_and_the_rest_comes_on_request(
        small: Services) -> None:
    alice = Client(small).signup("alice")
    friends = [Client(small).signup(f"friend{k}") for k in range(3)]
    for f in friends:
        alice.ok({"type": "friend_add", "to": f.id})
        f.ok({"type": "friend_accept", "from": alice.id})
    gids = [alice.ok({"type": "group_create", "name": f"g{k}"})["group"]["id"]
            for k in range(3)]
    for f in friends:
        f.ok({"type": "group_join", "group": gids[0]})
    alice.ok({"type": "logout"})
    reply = alice.login("alice")[0]
    assert [g["id"] for g in reply["groups"]] == gids[:2] and reply["groups_more"] is True
    first = reply["groups"][0]
    assert first["member_count"] == 4 and len(first["members"]) == 2
    assert first["more_members"] is True
    assert len(reply["friends"]) == 2 and reply["friends_more"] is True
    rest = alice.ok({"type": "groups", "after": gids[1]})
    assert [g["id"] for g in rest["groups"]] == gids[2:] and rest["more"] is False
    more_friends = alice.ok({"type": "friends", "after": reply["friends"][-1]["id"]})
    assert [f["id"] for f in more_friends["friends"]] == [friends[2].id]
    assert more_friends["more"] is False
    # every friend still hears she is online, not only the first page
    for f in friends:
        assert any(p["type"] == "presence" and p["user"] == alice.id and p["online"]
                   for p in f.conn.take())


def test_group_info_pages_its_members(small: Services) -> None:
    alice = Client(small).signup("alice")
    gid = alice.ok({"type": "group_create", "name": "big"})["group"]["id"]
    others = [Client(small).signup(f"m{k}") for k in range(4)]
    for o in others:
        o.ok({"type": "group_join", "group": gid})
    page = alice.ok({"type": "group_info", "group": gid, "limit": 2})["group"]
    assert page["member_count"] == 5 and page["more_members"] is True
    assert [m["name"] for m in page["members"]] == ["alice", "m0"]
    page = alice.ok({"type": "group_info", "group": gid, "limit": 2, "offset": 4})["group"]
    assert [m["name"] for m in page["members"]] == ["m3"] and page["more_members"] is False
    assert error(alice.request({"type": "group_info", "group": gid, "limit": 501,
                                "req": 1})) == "bad_field"
