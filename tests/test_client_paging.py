"""The console client and bounded lists (R8), without a server: the paging requests,
the roster's bookkeeping of partial lists, counts from ``member_count``, and the
console fetching the rest of friends, groups and a group's members."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from qqchat_client.paging import (
    FRIENDS_PAGE,
    GROUPS_PAGE,
    MEMBERS_PAGE,
    login_rest,
    merge,
    next_page,
)
from qqchat_client.render import render_error, render_reply, render_summary
from qqchat_client.roster import Roster
from test_client_console import Harness

NOW = datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC).timestamp()


def member(uid: int, role: str = "member", online: bool = False) -> dict[str, Any]:
    return {"id": uid, "name": f"u{uid}", "role": role, "online": online}


def members(first: int, last: int) -> list[dict[str, Any]]:
    return [member(uid) for uid in range(first, last + 1)]


def friend(uid: int, online: bool = False) -> dict[str, Any]:
    return {"id": uid, "name": f"u{uid}", "online": online}


#: a group of 25 whose login reply lists 20; more friends and groups than listed
BIG = {"id": 5, "name": "crowd", "desc": "", "role": "member",
       "members": [member(2, "creator", True), *members(3, 21)],
       "member_count": 25, "more_members": True}
LOGIN = {"type": "login", "user": {"id": 1, "name": "me"},
         "friends": [friend(2, True), friend(3)], "friends_more": True,
         "groups": [BIG], "groups_more": True, "requests": []}


def logged_in_roster() -> Roster:
    r = Roster()
    r.learn_reply({"type": "login"}, LOGIN)
    return r


# -- paging ----------------------------------------------------------------------------


def test_next_page_follows_more_and_stops() -> None:
    friends = {"type": "friends", "limit": FRIENDS_PAGE}
    assert next_page(friends, {"friends": [friend(4), friend(9)], "more": True}) == {
        "type": "friends", "limit": FRIENDS_PAGE, "after": 9}
    assert next_page(friends, {"friends": [friend(4)], "more": False}) is None
    # an empty page saying "more" would be asked for again forever
    assert next_page(friends, {"friends": [], "more": True}) is None
    groups = {"type": "groups", "limit": GROUPS_PAGE, "after": 3}
    assert next_page(groups, {"groups": [BIG], "more": True})["after"] == 5  # type: ignore[index]
    info = {"type": "group_info", "group": 5, "limit": MEMBERS_PAGE}
    page = {"group": {"id": 5, "members": members(1, 500), "more_members": True}}
    assert next_page(info, page) == {**info, "offset": 500}
    assert next_page({**info, "offset": 500}, page) == {**info, "offset": 1000}
    assert next_page(info, {"group": {"id": 5, "members": members(1, 3),
                                      "more_members": False}}) is None
    assert next_page({"type": "who"}, {"users": [], "more": True}) is None


def test_merge_keeps_order_and_each_id_once() -> None:
    first = {"type": "group_info", "group": {"id": 5, "name": "crowd", "members": members(1, 4),
                                             "member_count": 9, "more_members": True}}
    # someone left between the pages: the list moved and one member comes again
    second = {"type": "group_info", "group": {"id": 5, "name": "crowd",
                                              "members": members(4, 8), "member_count": 8,
                                              "more_members": False}}
    merged = merge(first, second)
    assert [m["id"] for m in merged["group"]["members"]] == list(range(1, 9))
    assert merged["group"]["member_count"] == 8 and merged["group"]["more_members"] is False
    friends = merge({"type": "friends", "friends": [friend(2)], "more": True},
                    {"type": "friends", "friends": [friend(7)], "more": False})
    assert friends == {"type": "friends", "friends": [friend(2), friend(7)], "more": False}


def test_login_rest_pages_friends_then_groups() -> None:
    r = logged_in_roster()
    assert login_rest(r) == {"type": "friends", "limit": FRIENDS_PAGE, "after": 3}
    r.learn_reply({"type": "friends", "limit": FRIENDS_PAGE, "after": 3},
                  {"type": "friends", "friends": [friend(8, True)], "more": False})
    assert r.friends == {2: True, 3: False, 8: True}
    assert login_rest(r) == {"type": "groups", "limit": GROUPS_PAGE, "after": 5}
    r.learn_reply({"type": "groups", "limit": GROUPS_PAGE, "after": 5},
                  {"type": "groups", "groups": [{**BIG, "id": 6, "name": "more"}],
                   "more": True})
    assert set(r.groups) == {5, 6} and login_rest(r) == {
        "type": "groups", "limit": GROUPS_PAGE, "after": 6}
    r.learn_reply({"type": "groups", "limit": GROUPS_PAGE, "after": 6},
                  {"type": "groups", "groups": [], "more": True})
    assert login_rest(r) is None


# -- the roster ----------------------------------------------------------------------------


def test_a_partial_member_list_counts_from_member_count() -> None:
    r = logged_in_roster()
    g = r.groups[5]
    assert (len(g.members), g.member_count, g.more_members) == (20, 25, True)
    assert g.role == "member"
    # presence of a member not listed: nothing to update (a friend, though, is updated)
    r.learn_reply({"type": "friends", "after": 3},
                  {"type": "friends", "friends": [friend(24)], "more": False})
    r.learn_push({"type": "presence", "user": 24, "name": "u24", "online": True})
    assert 24 not in g.members and r.friends[24] is True
    # a join counts but is not placed; a leave of someone not listed counts down
    r.learn_push({"type": "group_joined", "group": 5, "user": 30, "name": "u30"})
    assert (len(g.members), g.member_count) == (20, 26)
    r.learn_push({"type": "group_left", "group": 5, "user": 23, "name": "u23"})
    r.learn_push({"type": "group_left", "group": 5, "user": 21, "name": "u21"})
    assert (len(g.members), g.member_count) == (19, 24)


def test_group_info_of_my_group_replaces_the_preview() -> None:
    r = logged_in_roster()
    info = {"id": 5, "name": "crowd", "desc": "", "creator": 2,
            "members": [member(2, "creator"), *members(3, 25), member(1)],
            "member_count": 25, "more_members": False}
    r.learn_reply({"type": "group_info", "group": 5}, {"type": "group_info", "group": info})
    g = r.groups[5]
    assert (len(g.members), g.member_count, g.more_members) == (25, 25, False)
    r.learn_push({"type": "presence", "user": 24, "name": "u24", "online": True})
    assert g.members[24].online is True
    r.learn_push({"type": "group_joined", "group": 5, "user": 30, "name": "u30"})
    r.learn_push({"type": "group_left", "group": 5, "user": 99, "name": "u99"})
    assert (len(g.members), g.member_count) == (26, 26)
    # a group I am in whose first page does not list me: still mine, role from the creator
    r.learn_reply({"type": "group_join", "group": 7}, {"type": "group_join", "group": {
        "id": 7, "name": "huge", "desc": "", "creator": 2, "members": members(2, 101),
        "member_count": 300, "more_members": True}})
    assert r.groups[7].role == "member" and r.groups[7].member_count == 300


# -- rendering --------------------------------------------------------------------------


def test_counts_come_from_member_count() -> None:
    r = logged_in_roster()
    assert render_summary(r, 0).splitlines()[1] == "Groups: crowd (g5, 25 members)"
    text = render_reply({"type": "groups"}, {"type": "groups", "groups": [BIG]}, r, NOW, UTC)
    assert text == "g5 crowd: 25 members, 1 of the first 20 online, you are member"
    joined = render_reply({"type": "group_join", "group": 5}, {"group": {
        "id": 5, "name": "crowd", "members": members(1, 100), "member_count": 250}}, r, NOW, UTC)
    assert joined == "Joined group crowd (g5), 250 members."
    info = {"id": 5, "name": "crowd", "desc": "", "creator": 2,
            "members": [member(2, "creator", True), *members(3, 26)],
            "member_count": 25, "more_members": False}
    lines = render_reply({"type": "group_info", "group": 5}, {"group": info}, r, NOW,
                         UTC).splitlines()  # type: ignore[union-attr]
    assert lines[1] == "  25 members, 1 online:" and len(lines) == 27
    assert lines[2] == "  u2 (2) creator, online" and lines[-1] == "  u26 (26) member, offline"
    # stopped short (the page bound): says how many are listed
    info = {**info, "members": members(2, 11), "member_count": 25}
    shown = render_reply({"type": "group_info", "group": 5}, {"group": info}, r, NOW, UTC)
    assert "  25 members, 0 online (10 listed):" in shown.splitlines()  # type: ignore[union-attr]


def test_group_caps_in_words() -> None:
    assert render_error({"type": "error", "code": "too_many_groups", "message": "x"},
                        "joingroup") == ("joingroup failed: you are in as many groups as the "
                                         "server allows; leave one first (leavegroup GID).")
    assert render_error({"type": "error", "code": "too_many_groups_created", "message": "x"},
                        "creategroup") == ("creategroup failed: you have created as many "
                                           "groups as the server allows.")


# -- the console ---------------------------------------------------------------------------


def test_console_fetches_the_rest_after_login_before_the_summary() -> None:
    h = Harness()
    h.console.line("login me")
    h.console.line("who")
    h.sent()
    h.receive(type="login", req=1, **{k: v for k, v in LOGIN.items() if k != "type"})
    h.receive(type="synced", count=0)
    assert h.sent() == [{"type": "friends", "limit": FRIENDS_PAGE, "after": 3, "req": 2}]
    assert not any(line.startswith("Friends:") for line in h.screen.shown)
    h.receive(type="friends", req=2, friends=[friend(9, True)], more=True)
    assert h.sent() == [{"type": "friends", "limit": FRIENDS_PAGE, "after": 9, "req": 3}]
    h.receive(type="friends", req=3, friends=[friend(12)], more=False)
    assert h.sent() == [{"type": "groups", "limit": GROUPS_PAGE, "after": 5, "req": 4}]
    h.receive(type="groups", req=4, groups=[{**BIG, "id": 6, "name": "later",
                                            "member_count": 3, "more_members": False,
                                            "members": members(1, 3)}], more=False)
    assert h.screen.shown[-4:] == [
        "Friends: u2 (2, online), u3 (3, offline), u9 (9, online), u12 (12, offline)",
        "Groups: crowd (g5, 25 members), later (g6, 3 members)",
        "Friend requests: none",
        "Offline messages: 0",
    ]
    assert h.sent() == [{"type": "who", "req": 5}]  # then the next command


def test_group_command_pages_every_member() -> None:
    h = Harness()
    h.console.line("login me")
    h.receive(type="login", req=1, **{**{k: v for k, v in LOGIN.items() if k != "type"},
                                      "friends_more": False, "groups_more": False})
    h.receive(type="synced", count=0)
    h.sent()
    h.console.line("group 5")
    assert h.sent() == [{"type": "group_info", "group": 5, "limit": MEMBERS_PAGE, "req": 2}]
    head = {"id": 5, "name": "crowd", "desc": "", "creator": 2, "member_count": 700}
    h.receive(type="group_info", req=2, group={**head, "members": members(2, 501),
                                               "more_members": True})
    assert h.sent() == [{"type": "group_info", "group": 5, "limit": MEMBERS_PAGE,
                         "offset": 500, "req": 3}]
    h.receive(type="group_info", req=3, group={**head, "members": members(502, 701),
                                               "more_members": False})
    assert h.sent() == []
    assert "  700 members, 0 online:" in h.screen.shown
    assert h.screen.shown[-1] == "  u701 (701) member, offline"
    assert len(h.console.roster.groups[5].members) == 700


def test_a_refused_page_fails_the_command_in_words() -> None:
    h = Harness()
    h.console.line("login me")
    h.receive(type="login", req=1, **{**{k: v for k, v in LOGIN.items() if k != "type"},
                                      "friends_more": False, "groups_more": False})
    h.receive(type="synced", count=0)
    h.sent()
    h.console.line("friends")
    h.receive(type="friends", req=2, friends=[friend(2)], more=True)
    h.receive(type="error", req=3, code="rate_limited", message="too many requests")
    assert h.screen.shown[-1] == "friends failed: too many requests."
    assert h.console.failures == 1
