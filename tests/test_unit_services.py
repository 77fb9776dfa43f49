"""Accounts, messages, friends and groups against real SQL on the threadless store.

Each test drives requests through the real Dispatcher with Sessions on
FakeConnections, so it checks both the reply and the pushes other users get.
The group-commit log only writes when ``clock.advance(0)`` runs; the Client
helper does that after every request.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, task
from unit_support import (
    Client,
    FakeConnection,
    Services,
    build_services,
    dispatched,
    result_of,
    run,
)

from qqchat.errors import ChatError
from qqchat.services.limits import Limits
from qqchat.session import Session
from qqchat.storage.log import KIND_DIRECT, NewMessage, Stored
from qqchat.storage.writer import LogWriter


def user(services: Services, name: str) -> Client:
    """A registered, logged-in client with nothing pending on its connection."""
    return Client(services).signup(name)


def error(reply: dict[str, Any] | None) -> str:
    assert reply is not None and reply["type"] == "error", reply
    return str(reply["code"])


def messages_of(conn: FakeConnection) -> list[dict[str, Any]]:
    return [f for f in conn.take() if f["type"] == "message"]


def count_rows(services: Services, sql: str, *params: Any) -> int:
    return int(result_of(services.pool.runQuery(sql, params))[0][0])


# -- register ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["alice", "A.b-c_d", "名字", "x" * 32, "007bond"])
def test_register_accepts_valid_names(services: Services, name: str) -> None:
    reply = Client(services).ok({"type": "register", "name": name, "password": "secret-pw"})
    assert reply["name"] == name and isinstance(reply["id"], int) and reply["id"] >= 1


@pytest.mark.parametrize("name", ["", "x" * 33, "has space", "semi;colon", "12345", "a\n",
                                  "tab\t"])
def test_register_rejects_bad_names(services: Services, name: str) -> None:
    """Names are 1-32 word characters, '.' or '-', and never all digits (ids are)."""
    reply = Client(services).request({"type": "register", "name": name,
                                      "password": "secret-pw"})
    assert error(reply) == "bad_name"


@pytest.mark.parametrize("password", ["", "12345", "p" * 257])
def test_register_rejects_weak_passwords(services: Services, password: str) -> None:
    reply = Client(services).request({"type": "register", "name": "bob",
                                      "password": password})
    assert error(reply) == "weak_password"


def test_register_boundary_passwords(services: Services) -> None:
    client = Client(services)
    client.ok({"type": "register", "name": "short", "password": "123456"})
    client.ok({"type": "register", "name": "long", "password": "p" * 256})


def test_register_name_taken(services: Services) -> None:
    first = Client(services).register("alice")
    reply = Client(services).request({"type": "register", "name": "alice",
                                      "password": "other-pw"})
    assert error(reply) == "name_taken"
    assert count_rows(services, "SELECT COUNT(*) FROM users") == 1
    assert first == 1


def test_register_gives_distinct_ids(services: Services) -> None:
    ids = [Client(services).register(f"user{n}") for n in range(3)]
    assert len(set(ids)) == 3


# -- login ------------------------------------------------------------------


def test_login_reply_then_synced(services: Services) -> None:
    """F2: the reply carries the profile and the lists, then the backlog marker."""
    client = Client(services)
    uid = client.register("alice")
    got = client.login("alice")
    assert got == [
        {"type": "login", "req": "login", "user": {"id": uid, "name": "alice"},
         "friends": [], "friends_more": False, "groups": [], "groups_more": False,
         "requests": []},
        {"type": "synced", "count": 0},
    ]
    assert services.hub.get(uid) is client.session


def test_login_by_id(services: Services) -> None:
    client = Client(services)
    uid = client.register("alice")
    assert client.request({"type": "login", "id": uid, "password": "secret-pw"}) is None
    assert client.conn.take()[0]["user"] == {"id": uid, "name": "alice"}


def test_bad_credentials_do_not_say_which_part_was_wrong(services: Services) -> None:
    """F2: a wrong password and an unknown user look the same to the client."""
    Client(services).register("alice")
    wrong_pw = Client(services).request({"type": "login", "name": "alice",
                                         "password": "not-it-at-all"})
    no_user = Client(services).request({"type": "login", "name": "nobody",
                                        "password": "secret-pw"})
    no_id = Client(services).request({"type": "login", "id": 999, "password": "secret-pw"})
    assert error(wrong_pw) == error(no_user) == error(no_id) == "bad_credentials"
    assert wrong_pw is not None and no_user is not None and no_id is not None
    assert wrong_pw["message"] == no_user["message"] == no_id["message"]
    assert len(services.hub) == 0


def test_second_login_on_same_connection_is_refused(services: Services) -> None:
    client = user(services, "alice")
    reply = client.request({"type": "login", "name": "alice", "password": "secret-pw"})
    assert error(reply) == "already_logged_in"
    assert services.hub.get(client.id or 0) is client.session


def test_new_login_kicks_the_old_session(services: Services) -> None:
    """F3: one session per user; the newer login wins, the old one is told and closed."""
    first = user(services, "alice")
    second = Client(services)
    second.login("alice")
    assert first.conn.take() == [{"type": "kicked", "code": "replaced",
                                  "reason": "logged in from another place"}]
    assert first.conn.closed
    assert not second.conn.closed
    assert services.hub.get(first.id or 0) is second.session
    # the kicked session is no longer anyone
    assert error(first.request({"type": "who"})) == "not_logged_in"
    # messages now reach only the new session
    bob = user(services, "bob")
    bob.ok({"type": "chat", "to": first.id, "text": "which one?"})
    assert [m["text"] for m in messages_of(second.conn)] == ["which one?"]
    assert first.conn.take() == []


def test_duplicate_login_refused_when_kicking_is_off(clock: task.Clock) -> None:
    """F3 option: the seed's behaviour, the second login is refused, the first kept."""
    services = build_services(clock, kick_on_duplicate=False)
    try:
        first = user(services, "alice")
        second = Client(services)
        reply = second.request({"type": "login", "name": "alice", "password": "secret-pw"})
        assert error(reply) == "already_online"
        assert first.conn.take() == [] and not first.conn.closed
        assert services.hub.get(first.id or 0) is first.session
        assert error(second.request({"type": "who"})) == "not_logged_in"
        assert [m for m in second.conn.take() if m["type"] == "synced"] == []
    finally:
        services.close()


def test_logout_keeps_the_connection_and_allows_login_again(services: Services) -> None:
    """F4: logout drops presence but the connection can log in again."""
    alice = user(services, "alice")
    assert alice.ok({"type": "logout"}) == {"type": "logout", "req": "r"}
    assert not alice.conn.closed and len(services.hub) == 0
    assert error(alice.request({"type": "who"})) == "not_logged_in"
    alice.login("alice")
    assert services.hub.get(alice.id or 0) is alice.session


def befriend(a: Client, b: Client) -> None:
    a.ok({"type": "friend_add", "to": b.id})
    b.ok({"type": "friend_accept", "from": a.id})
    a.conn.take()
    b.conn.take()


def test_friends_see_presence_on_login_logout_and_drop(services: Services) -> None:
    """F9/F4: friends get presence events; a dropped connection counts as logout."""
    alice, bob = user(services, "alice"), user(services, "bob")
    befriend(alice, bob)
    bob.ok({"type": "logout"})
    assert alice.conn.take() == [{"type": "presence", "user": bob.id, "name": "bob",
                                  "online": False}]
    bob.login("bob")
    assert alice.conn.take() == [{"type": "presence", "user": bob.id, "name": "bob",
                                  "online": True}]
    result_of(services.dispatcher.connection_lost(bob.session))
    assert alice.conn.take() == [{"type": "presence", "user": bob.id, "name": "bob",
                                  "online": False}]
    assert services.hub.get(bob.id or 0) is None


def test_kicked_session_dropping_does_not_take_the_user_offline(services: Services) -> None:
    """When the kicked connection finally closes, the new session stays online and
    friends are not told the user left."""
    alice, bob = user(services, "alice"), user(services, "bob")
    befriend(alice, bob)
    bob2 = Client(services)
    bob2.login("bob")
    alice.conn.take()
    result_of(services.dispatcher.connection_lost(bob.session))
    assert alice.conn.take() == []
    assert services.hub.get(bob.id or 0) is bob2.session


def test_who_pages_online_users(services: Services) -> None:
    clients = [user(services, f"u{n}") for n in range(5)]
    page = clients[0].ok({"type": "who", "limit": 2, "offset": 1})
    assert page["total"] == 5 and page["offset"] == 1
    assert page["users"] == [{"id": c.id, "name": f"u{n}"}
                             for n, c in enumerate(clients) if n in (1, 2)]


# -- chat and the message log -------------------------------------------------


def test_chat_reply_waits_for_the_commit_and_pushes_to_online_recipient(
        services: Services, clock: task.Clock) -> None:
    """F6/F7: nothing is replied or pushed before the message is stored; then the
    reply carries id and ts and the recipient gets the same id."""
    alice, bob = user(services, "alice"), user(services, "bob")
    clock.advance(12.5)
    d = dispatched(services, alice.session, {"type": "chat", "to": bob.id,
                                                     "text": "hi bob", "req": 1})
    assert not d.called
    assert bob.conn.lines == []
    assert count_rows(services, "SELECT COUNT(*) FROM message_log") == 0
    clock.advance(0)
    reply = result_of(d)
    assert reply == {"type": "chat", "req": 1, "id": reply["id"], "ts": 12500}
    assert count_rows(services, "SELECT COUNT(*) FROM message_log WHERE id = ? AND body = ?",
                      reply["id"], "hi bob") == 1
    assert bob.conn.take() == [{"type": "message", "id": reply["id"], "from": alice.id,
                                "name": "alice", "text": "hi bob", "ts": 12500,
                                "to": bob.id}]
    assert alice.conn.take() == []


@pytest.mark.parametrize(("text", "code"), [("", "empty_text"), ("  \n ", "empty_text"),
                                            ("x" * 4001, "too_long")])
def test_chat_text_rules(services: Services, text: str, code: str) -> None:
    alice = user(services, "alice")
    assert error(alice.request({"type": "chat", "to": alice.id, "text": text})) == code


def test_chat_to_unknown_user(services: Services) -> None:
    alice = user(services, "alice")
    assert error(alice.request({"type": "chat", "to": 42, "text": "hi"})) == "no_such_user"
    assert count_rows(services, "SELECT COUNT(*) FROM message_log") == 0


def test_offline_messages_arrive_at_login_in_order_then_synced(services: Services) -> None:
    """F6: an offline recipient gets everything at next login, in send order."""
    alice = user(services, "alice")
    bob = Client(services)
    bob.register("bob")
    sent = [alice.ok({"type": "chat", "to": bob.id, "text": f"m{n}"})["id"] for n in range(3)]
    got = bob.login("bob")
    assert [f["type"] for f in got] == ["login", "message", "message", "message", "synced"]
    assert [(f["id"], f["text"], f["from"], f["to"]) for f in got[1:4]] == \
        [(mid, f"m{n}", alice.id, bob.id) for n, mid in enumerate(sent)]
    assert got[-1] == {"type": "synced", "count": 3}


def test_unacked_messages_are_resent_acked_ones_never(services: Services) -> None:
    """F7: what is not acknowledged comes again at next login; what is, never does."""
    alice = user(services, "alice")
    bob = Client(services)
    bob.register("bob")
    ids = [alice.ok({"type": "chat", "to": bob.id, "text": f"m{n}"})["id"] for n in range(3)]
    bob.login("bob")
    bob.ok({"type": "logout"})
    assert [f["id"] for f in bob.login("bob") if f["type"] == "message"] == ids
    assert bob.ok({"type": "ack", "id": ids[1]}) == {"type": "ack", "req": "r", "id": ids[1]}
    bob.ok({"type": "logout"})
    assert [f["id"] for f in bob.login("bob") if f["type"] == "message"] == ids[2:]
    bob.ok({"type": "ack", "id": ids[2]})
    bob.ok({"type": "logout"})
    assert bob.login("bob")[1:] == [{"type": "synced", "count": 0}]


def test_ack_beyond_what_was_delivered_is_refused(services: Services) -> None:
    """An ack may not skip messages the client never saw."""
    alice, bob = user(services, "alice"), user(services, "bob")
    mid = alice.ok({"type": "chat", "to": bob.id, "text": "one"})["id"]
    assert error(bob.request({"type": "ack", "id": mid + 1})) == "bad_ack"
    assert bob.ok({"type": "ack", "id": mid})["id"] == mid
    # the refused ack did not move the stored position past the message
    assert count_rows(services, "SELECT acked FROM users WHERE id = ?", bob.id) == mid


def test_cid_retry_is_stored_once_and_pushed_once(services: Services) -> None:
    """F7: a retried send with the same cid returns the same id, marked duplicate."""
    alice, bob = user(services, "alice"), user(services, "bob")
    msg = {"type": "chat", "to": bob.id, "text": "once", "cid": "c-1"}
    first = alice.ok(msg)
    again = alice.ok(msg)
    assert "duplicate" not in first
    assert again["id"] == first["id"] and again["duplicate"] is True
    assert again["ts"] == first["ts"]
    assert [m["id"] for m in messages_of(bob.conn)] == [first["id"]]
    assert count_rows(services, "SELECT COUNT(*) FROM message_log") == 1


def test_cid_retry_within_one_batch(services: Services, clock: task.Clock) -> None:
    """Two sends with the same cid committed in the same transaction still store one."""
    alice, bob = user(services, "alice"), user(services, "bob")
    msg = {"type": "chat", "to": bob.id, "text": "once", "cid": 77}
    before = services.writer.batches
    d1 = dispatched(services, alice.session, msg)
    d2 = dispatched(services, alice.session, msg)
    clock.advance(0)
    r1, r2 = result_of(d1), result_of(d2)
    assert r1 is not None and r2 is not None
    assert r1["id"] == r2["id"] and r2.get("duplicate") is True and "duplicate" not in r1
    assert len(messages_of(bob.conn)) == 1
    assert services.writer.batches == before + 1


def test_cids_are_per_sender(services: Services) -> None:
    alice, bob = user(services, "alice"), user(services, "bob")
    a = alice.ok({"type": "chat", "to": bob.id, "text": "a", "cid": "same"})
    b = bob.ok({"type": "chat", "to": alice.id, "text": "b", "cid": "same"})
    assert a["id"] != b["id"] and "duplicate" not in b


def test_live_messages_during_backlog_follow_it_without_duplicates() -> None:
    """A session syncing its backlog holds live pushes, then sends only those the
    backlog did not already cover, in id order."""
    conn = FakeConnection()
    session = Session(conn)
    session.begin_sync()
    session.deliver(7, b'{"type":"message","id":7}\n')
    session.deliver(5, b'{"type":"message","id":5}\n')
    session.deliver(9, b'{"type":"message","id":9}\n')
    assert conn.lines == []
    session.max_sent = 7  # the backlog went up to 7
    session.end_sync()
    assert [f["id"] for f in conn.frames()] == [9]
    assert session.max_sent == 9


# -- broadcast --------------------------------------------------------------


def test_broadcast_stored_once_pushed_to_others_and_kept_for_offline(
        services: Services) -> None:
    """F8: one row; online users but the sender get it now, offline ones at login,
    and users created afterwards never do."""
    alice, bob = user(services, "alice"), user(services, "bob")
    carol = Client(services)
    carol.register("carol")
    reply = alice.ok({"type": "broadcast", "text": "hello all"})
    assert count_rows(services, "SELECT COUNT(*) FROM message_log") == 1
    assert bob.conn.take() == [{"type": "message", "id": reply["id"], "from": alice.id,
                                "name": "alice", "text": "hello all", "ts": reply["ts"],
                                "broadcast": True}]
    assert alice.conn.take() == []
    got = carol.login("carol")
    assert [(f["id"], f.get("broadcast")) for f in got if f["type"] == "message"] == \
        [(reply["id"], True)]
    late = Client(services)
    late.register("late")
    assert late.login("late")[1:] == [{"type": "synced", "count": 0}]
    # the sender does not get their own broadcast back at login
    alice.ok({"type": "logout"})
    assert alice.login("alice")[1:] == [{"type": "synced", "count": 0}]


# -- groups -----------------------------------------------------------------


def test_group_lifecycle(services: Services) -> None:
    """F10: create (creator), join (member, others told), chat reaches members but
    the sender, leave (others told), and a former member can no longer send."""
    alice, bob, carol = (user(services, n) for n in ("alice", "bob", "carol"))
    created = alice.ok({"type": "group_create", "name": "crew", "desc": "the crew"})["group"]
    gid = created["id"]
    assert created == {"id": gid, "name": "crew", "desc": "the crew", "creator": alice.id,
                       "members": [{"id": alice.id, "name": "alice", "role": "creator",
                                    "online": True}],
                       "member_count": 1, "more_members": False}
    joined = bob.ok({"type": "group_join", "group": gid})["group"]
    assert [(m["id"], m["role"]) for m in joined["members"]] == \
        [(alice.id, "creator"), (bob.id, "member")]
    assert alice.conn.take() == [{"type": "group_joined", "group": gid, "user": bob.id,
                                  "name": "bob"}]
    assert error(bob.request({"type": "group_join", "group": gid})) == "already_member"

    sent = alice.ok({"type": "group_chat", "group": gid, "text": "hey crew"})
    assert [(m["id"], m["group"], m["text"]) for m in messages_of(bob.conn)] == \
        [(sent["id"], gid, "hey crew")]
    assert messages_of(alice.conn) == [] and messages_of(carol.conn) == []
    assert error(carol.request({"type": "group_chat", "group": gid, "text": "me too"})) \
        == "not_member"
    assert count_rows(services, "SELECT COUNT(*) FROM message_log") == 1

    assert bob.ok({"type": "group_leave", "group": gid})["group"] == {"id": gid, "name": "crew"}
    assert alice.conn.take() == [{"type": "group_left", "group": gid, "user": bob.id,
                                  "name": "bob"}]
    assert error(bob.request({"type": "group_chat", "group": gid, "text": "x"})) \
        == "not_member"
    assert error(bob.request({"type": "group_leave", "group": gid})) == "not_member"
    assert [g["id"] for g in alice.ok({"type": "groups"})["groups"]] == [gid]
    assert bob.ok({"type": "groups"})["groups"] == []


def test_group_errors_for_missing_groups(services: Services) -> None:
    alice = user(services, "alice")
    for msg in ({"type": "group_join", "group": 5}, {"type": "group_leave", "group": 5},
                {"type": "group_info", "group": 5},
                {"type": "group_chat", "group": 5, "text": "x"},
                {"type": "history", "group": 5}):
        assert error(alice.request(msg)) == "no_such_group", msg
    assert error(alice.request({"type": "group_create", "name": "   "})) == "bad_name"
    assert error(alice.request({"type": "group_create", "name": "g", "desc": "d" * 257})) \
        == "too_long"


def test_group_messages_wait_for_offline_members_from_their_join_on(
        services: Services) -> None:
    """F10: offline members get group messages at login, but only those sent after
    they joined."""
    alice = user(services, "alice")
    bob = Client(services)
    bob.register("bob")
    gid = alice.ok({"type": "group_create", "name": "crew"})["group"]["id"]
    alice.ok({"type": "group_chat", "group": gid, "text": "before bob"})
    bob.login("bob")
    bob.ok({"type": "group_join", "group": gid})
    bob.ok({"type": "logout"})
    after = alice.ok({"type": "group_chat", "group": gid, "text": "after bob"})
    got = [f for f in bob.login("bob") if f["type"] == "message"]
    assert [(f["id"], f["text"], f["group"]) for f in got] == [(after["id"], "after bob", gid)]


# -- friends ----------------------------------------------------------------


def test_friend_request_accept_remove(services: Services) -> None:
    """F9: request -> pushed to the other side -> accept -> both lists, both told;
    remove -> the other side is told."""
    alice, bob = user(services, "alice"), user(services, "bob")
    assert alice.ok({"type": "friend_add", "to": bob.id})["status"] == "requested"
    pushed = bob.conn.take()
    assert len(pushed) == 1 and pushed[0]["type"] == "friend_request"
    assert (pushed[0]["from"], pushed[0]["name"]) == (alice.id, "alice")

    accepted = bob.ok({"type": "friend_accept", "from": alice.id})
    assert accepted["friend"] == {"id": alice.id, "name": "alice", "online": True}
    assert alice.conn.take() == [{"type": "friend_added", "user": bob.id, "name": "bob",
                                  "online": True}]
    assert alice.ok({"type": "friends"})["friends"] == [{"id": bob.id, "name": "bob",
                                                         "online": True}]
    assert bob.ok({"type": "friends"})["friends"] == [{"id": alice.id, "name": "alice",
                                                       "online": True}]
    assert error(alice.request({"type": "friend_add", "to": bob.id})) == "already_friends"

    assert alice.ok({"type": "friend_remove", "id": bob.id})["user"] == bob.id
    assert bob.conn.take() == [{"type": "friend_removed", "user": alice.id, "name": "alice"}]
    assert alice.ok({"type": "friends"})["friends"] == []
    assert bob.ok({"type": "friends"})["friends"] == []
    assert error(alice.request({"type": "friend_remove", "id": bob.id})) == "not_friend"


def test_friend_decline(services: Services) -> None:
    alice, bob = user(services, "alice"), user(services, "bob")
    alice.ok({"type": "friend_add", "to": bob.id})
    bob.conn.take()
    assert bob.ok({"type": "friend_decline", "from": alice.id})["user"] == alice.id
    assert alice.conn.take() == [{"type": "friend_declined", "user": bob.id, "name": "bob"}]
    assert error(bob.request({"type": "friend_accept", "from": alice.id})) == "no_request"
    assert error(bob.request({"type": "friend_decline", "from": alice.id})) == "no_request"
    assert alice.ok({"type": "friends"})["friends"] == []


def test_crossed_requests_make_friends(services: Services) -> None:
    """If the other side asked first, asking back accepts."""
    alice, bob = user(services, "alice"), user(services, "bob")
    alice.ok({"type": "friend_add", "to": bob.id})
    bob.conn.take()
    reply = bob.ok({"type": "friend_add", "to": alice.id})
    assert reply["status"] == "accepted"
    assert reply["friend"] == {"id": alice.id, "name": "alice", "online": True}
    assert [f["type"] for f in alice.conn.take()] == ["friend_added"]


def test_friend_request_to_offline_user_shows_at_login(services: Services) -> None:
    alice = user(services, "alice")
    bob = Client(services)
    bob.register("bob")
    alice.ok({"type": "friend_add", "to": bob.id})
    login = bob.login("bob")[0]
    assert [(r["from"], r["name"]) for r in login["requests"]] == [(alice.id, "alice")]


def test_friend_refusals(services: Services) -> None:
    alice = user(services, "alice")
    assert error(alice.request({"type": "friend_add", "to": alice.id})) == "is_self"
    assert error(alice.request({"type": "friend_add", "to": 99})) == "no_such_user"


# -- history ----------------------------------------------------------------


def test_history_pages_backwards(services: Services) -> None:
    """F11: newest page first, each page oldest-to-newest, ``before`` walks back."""
    alice, bob = user(services, "alice"), user(services, "bob")
    ids = []
    for n in range(5):
        sender, other = (alice, bob) if n % 2 == 0 else (bob, alice)
        ids.append(sender.ok({"type": "chat", "to": other.id, "text": f"m{n}"})["id"])
    carol = user(services, "carol")
    carol.ok({"type": "chat", "to": alice.id, "text": "not in this conversation"})

    page = alice.ok({"type": "history", "with": bob.id, "limit": 2})
    assert [m["id"] for m in page["messages"]] == ids[3:5] and page["more"] is True
    assert [m["text"] for m in page["messages"]] == ["m3", "m4"]
    page = alice.ok({"type": "history", "with": bob.id, "limit": 2,
                     "before": page["messages"][0]["id"]})
    assert [m["id"] for m in page["messages"]] == ids[1:3] and page["more"] is True
    page = alice.ok({"type": "history", "with": bob.id, "limit": 2,
                     "before": page["messages"][0]["id"]})
    assert [m["id"] for m in page["messages"]] == ids[0:1] and page["more"] is False
    # the other side sees the same conversation
    assert [m["id"] for m in bob.ok({"type": "history", "with": alice.id})["messages"]] == ids


def test_group_history_needs_membership(services: Services) -> None:
    alice, bob = user(services, "alice"), user(services, "bob")
    gid = alice.ok({"type": "group_create", "name": "crew"})["group"]["id"]
    mid = alice.ok({"type": "group_chat", "group": gid, "text": "g"})["id"]
    assert error(bob.request({"type": "history", "group": gid})) == "not_member"
    page = alice.ok({"type": "history", "group": gid})
    assert [(m["id"], m["group"]) for m in page["messages"]] == [(mid, gid)]


# -- the group-commit log -----------------------------------------------------


def test_appends_in_one_tick_share_one_transaction(services: Services, clock: task.Clock,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The log's reason to exist: N sends in one reactor turn are one write_batch."""
    calls: list[int] = []
    real = services.stores.message_log.write_batch

    def counting(messages: Any, acks: Any, now: int) -> defer.Deferred[list[Stored]]:
        calls.append(len(messages))
        return real(messages, acks, now)

    alice, bob = user(services, "alice"), user(services, "bob")
    monkeypatch.setattr(services.stores.message_log, "write_batch", counting)
    before = services.writer.batches
    ds = [dispatched(services, alice.session, {"type": "chat", "to": bob.id,
                                                       "text": f"m{n}"}) for n in range(5)]
    assert calls == [] and not any(d.called for d in ds)
    clock.advance(0)
    replies = [result_of(d) for d in ds]
    assert calls == [5]
    assert services.writer.batches == before + 1
    ids = [r["id"] for r in replies if r is not None]
    assert ids == sorted(ids) and len(set(ids)) == 5
    # pushes leave in log order
    assert [m["id"] for m in messages_of(bob.conn)] == ids


class HeldStore:
    """A store whose write_batch answers only when the test says, to show what the
    log does while a transaction is in flight."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[NewMessage], list[tuple[int, int]]]] = []
        self.pending: list[defer.Deferred[list[Stored]]] = []
        self.next_id = 1
        self.checks: list[list[tuple[int, int, int, frozenset[int], int | None]]] = []
        self.pending_checks: list[defer.Deferred[list[int]]] = []

    def write_batch(self, messages: Any, acks: Any, now: int) -> defer.Deferred[list[Stored]]:
        self.batches.append((list(messages), list(acks)))
        d: defer.Deferred[list[Stored]] = defer.Deferred()
        self.pending.append(d)
        return d

    def checked_acks(self, acks: Any) -> defer.Deferred[list[int]]:
        self.checks.append(list(acks))
        d: defer.Deferred[list[int]] = defer.Deferred()
        self.pending_checks.append(d)
        return d

    def commit(self, index: int) -> None:
        messages = self.batches[index][0]
        stored = [Stored(self.next_id + n, 0, False) for n in range(len(messages))]
        self.next_id += len(messages)
        self.pending[index].callback(stored)


def test_appends_during_a_commit_go_into_the_next_batch(clock: task.Clock) -> None:
    """While one transaction is in flight, new appends wait and then share the next
    one; callers' Deferreds fire only after their own batch commits."""
    store = HeldStore()
    log = LogWriter(store, clock)  # type: ignore[arg-type]
    first = log.append(NewMessage(KIND_DIRECT, 1, "a", recipient=2))
    clock.advance(0)
    assert len(store.batches) == 1
    later = [log.append(NewMessage(KIND_DIRECT, 1, t, recipient=2)) for t in "bcd"]
    ack = log.ack(2, 1)
    clock.advance(0)
    assert len(store.batches) == 1 and not first.called
    store.commit(0)
    assert result_of(first).id == 1 and not any(d.called for d in later)
    clock.advance(0)
    assert [len(b[0]) for b in store.batches] == [1, 3]
    assert store.batches[1][1] == [(2, 1)]
    store.commit(1)
    assert [result_of(d).id for d in later] == [2, 3, 4]
    assert result_of(ack) is None
    assert log.batches == 2
    assert result_of(log.idle()) is None


def test_settled_waits_only_for_that_users_acks(clock: task.Clock) -> None:
    """A login first lets the user's queued or in-flight ack commit (so its backlog
    does not repeat what was acked), and costs no transaction when there is none."""
    store = HeldStore()
    log = LogWriter(store, clock)  # type: ignore[arg-type]
    assert result_of(log.acks_written(7)) is None and store.batches == []
    log.ack(7, 5)
    queued = log.acks_written(7)
    assert result_of(log.acks_written(8)) is None  # another user waits for nothing
    clock.advance(0)
    assert store.batches[0][1] == [(7, 5)] and not queued.called
    in_flight = log.acks_written(7)  # the ack is being written: wait for the next batch
    store.commit(0)
    assert result_of(queued) is None and not in_flight.called
    clock.advance(0)
    store.commit(1)
    assert result_of(in_flight) is None
    assert result_of(log.acks_written(7)) is None and len(store.batches) == 2


def test_checked_acks_arriving_during_a_check_share_the_next(clock: task.Clock) -> None:
    """Several nodes: acks checked against the log go in transactions of their own,
    as many per transaction as arrived meanwhile; a login waits for its user's."""
    store = HeldStore()
    log = LogWriter(store, clock)  # type: ignore[arg-type]
    first = log.checked_ack(7, 0, 5, frozenset({5}))
    clock.advance(0)
    assert store.checks == [[(7, 0, 5, frozenset({5}), None)]]
    later = [log.checked_ack(8, 0, 9, frozenset()), log.checked_ack(7, 5, 6, frozenset({6}))]
    waiting = log.acks_written(7)
    idle = log.idle()
    clock.advance(0)
    assert len(store.checks) == 1 and not waiting.called
    store.pending_checks[0].callback([5])
    assert result_of(first) == 5 and not waiting.called
    assert store.checks[1] == [(8, 0, 9, frozenset(), None), (7, 5, 6, frozenset({6}), None)]
    store.pending_checks[1].callback([0, 6])
    assert [result_of(d) for d in later] == [0, 6]
    assert result_of(waiting) is None
    clock.advance(0)
    assert result_of(idle) is None and store.batches == []


def test_a_failed_check_fails_its_acks_and_the_next_still_runs(clock: task.Clock) -> None:
    store = HeldStore()
    log = LogWriter(store, clock)  # type: ignore[arg-type]
    failing = log.checked_ack(7, 0, 5, frozenset({5}))
    clock.advance(0)
    retry = log.checked_ack(7, 0, 5, frozenset({5}))
    store.pending_checks[0].errback(RuntimeError("gone"))
    with pytest.raises(RuntimeError):
        result_of(failing)
    store.pending_checks[1].callback([5])
    assert result_of(retry) == 5 and result_of(log.acks_written(7)) is None


def test_batches_are_capped(clock: task.Clock) -> None:
    store = HeldStore()
    log = LogWriter(store, clock, max_batch=2)  # type: ignore[arg-type]
    ds = [log.append(NewMessage(KIND_DIRECT, 1, str(n), recipient=2)) for n in range(5)]
    for n in range(3):
        clock.advance(0)
        store.commit(n)
    assert [len(b[0]) for b in store.batches] == [2, 2, 1]
    assert [result_of(d).id for d in ds] == [1, 2, 3, 4, 5]


def test_failed_batch_fails_every_caller_and_the_log_recovers(clock: task.Clock) -> None:
    store = HeldStore()
    log = LogWriter(store, clock)  # type: ignore[arg-type]
    ds = [log.append(NewMessage(KIND_DIRECT, 1, t, recipient=2)) for t in "ab"]
    clock.advance(0)
    store.pending[0].errback(RuntimeError("disk full"))
    for d in ds:
        with pytest.raises(RuntimeError):
            result_of(d)
    retry = log.append(NewMessage(KIND_DIRECT, 1, "c", recipient=2))
    clock.advance(0)
    store.commit(1)
    assert result_of(retry).id == 1


def test_services_can_be_driven_directly(services: Services) -> None:
    """The services enforce their rules without the dispatcher in front of them."""
    alice = user(services, "alice")
    reply = run(services.clock, services.hot.chat(alice.session, "r1", alice.id or 0, "self",
                                                  None))
    assert reply["type"] == "chat" and reply["req"] == "r1"
    assert reply["id"] >= 1 and "duplicate" not in reply
    with pytest.raises(ChatError) as refused:
        run(services.clock, services.hot.ack(alice.session, "r2", reply["id"] + 1))
    assert refused.value.code == "bad_ack"


def test_connection_dropped_during_login_leaves_friends_seeing_offline(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """F4: a dropped connection counts as logout, even when it drops while the login
    is still loading the user's lists: the last presence friends get is offline."""
    alice, bob = user(services, "alice"), user(services, "bob")
    befriend(alice, bob)
    bob.ok({"type": "logout"})
    alice.conn.take()

    held: list[defer.Deferred[None]] = []
    real = services.stores.social.login_view

    def slow(uid: int, *args: Any) -> defer.Deferred[Any]:
        gate: defer.Deferred[None] = defer.Deferred()
        held.append(gate)
        return gate.addCallback(lambda _: real(uid, *args))

    monkeypatch.setattr(services.stores.social, "login_view", slow)
    again = Client(services)
    d = dispatched(services, again.session, {"type": "login", "name": "bob",
                                                     "password": "secret-pw"})
    assert len(held) == 1 and not d.called  # claimed, now loading the summary
    again.session.closed = True  # what ChatProtocol.connectionLost does
    result_of(services.dispatcher.connection_lost(again.session))
    held[0].callback(None)
    result_of(d)

    presence = [f for f in alice.conn.take() if f["type"] == "presence"]
    assert presence and presence[-1]["online"] is False, presence
    assert services.hub.get(bob.id or 0) is None


def test_backlog_longer_than_a_page_arrives_whole_and_in_order(clock: task.Clock) -> None:
    s = build_services(clock, Limits(backlog_page=2, send_rate=0))
    try:
        alice, bob = user(s, "alice"), Client(s)
        bob.register("bob")
        ids = [alice.ok({"type": "chat", "to": bob.id, "text": f"m{n}"})["id"]
               for n in range(5)]
        frames = bob.login("bob")
        assert [(f["id"], f["text"]) for f in frames if f["type"] == "message"] == \
            [(i, f"m{n}") for n, i in enumerate(ids)]
        assert frames[-1] == {"type": "synced", "count": 5}
    finally:
        s.close()
