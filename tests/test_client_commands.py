"""The console client's pure parts: command parsing, rendering, the roster, line editing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from qqchat_client import lineedit
from qqchat_client.commands import HELP, CommandError, UnknownUserError, help_text, parse
from qqchat_client.render import (
    clean,
    render_error,
    render_message,
    render_push,
    render_reply,
    render_summary,
    stamp,
)
from qqchat_client.roster import Roster, match_user

# 2024-05-01 12:34:56 UTC
NOW = datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC).timestamp()
TS = int(NOW * 1000)

COMMANDS_IN_ISSUE = ["help", "register", "login", "logout", "passwd", "who", "search", "chat",
                     "broadcast", "addfriend", "accept", "decline", "unfriend", "friends",
                     "creategroup", "joingroup", "leavegroup", "groups", "findgroup", "group",
                     "groupchat", "history", "chats", "quit"]


def names(mapping: dict[str, int]) -> Any:
    return mapping.get


# -- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "expected"), [
    ("register alice", {"type": "register", "name": "alice"}),
    ("login alice", {"type": "login", "name": "alice"}),
    ("login 7", {"type": "login", "id": 7}),
    ("logout", {"type": "logout"}),
    ("who", {"type": "who"}),
    ("chat 2 hello  there ", {"type": "chat", "to": 2, "text": "hello  there"}),
    ("broadcast hi all", {"type": "broadcast", "text": "hi all"}),
    ("addfriend 3", {"type": "friend_add", "to": 3}),
    ("accept 3", {"type": "friend_accept", "from": 3}),
    ("decline 3", {"type": "friend_decline", "from": 3}),
    ("unfriend 3", {"type": "friend_remove", "id": 3}),
    ("friends", {"type": "friends", "limit": 1000}),
    ("creategroup devs", {"type": "group_create", "name": "devs"}),
    ("creategroup devs the dev team", {"type": "group_create", "name": "devs",
                                       "desc": "the dev team"}),
    ('creategroup "dev team" all of us', {"type": "group_create", "name": "dev team",
                                          "desc": "all of us"}),
    ("joingroup 4", {"type": "group_join", "group": 4}),
    ("joingroup g4", {"type": "group_join", "group": 4}),
    ("leavegroup 4", {"type": "group_leave", "group": 4}),
    ("groups", {"type": "groups", "limit": 200}),
    ("group g4", {"type": "group_info", "group": 4, "limit": 500}),
    ("groupchat 4 hello group", {"type": "group_chat", "group": 4, "text": "hello group"}),
    ("history 2", {"type": "history", "with": 2, "limit": 20}),
    ("history 2 5", {"type": "history", "with": 2, "limit": 5}),
    ("history g4 50", {"type": "history", "group": 4, "limit": 50}),
    ("  CHAT 2 x", {"type": "chat", "to": 2, "text": "x"}),
    ("login --remember alice", {"type": "login", "name": "alice", "remember": True}),
    ("login alice --remember", {"type": "login", "name": "alice", "remember": True}),
    ("login --remember 7", {"type": "login", "id": 7, "remember": True}),
    ("passwd", {"type": "password_change"}),
    ("search al", {"type": "user_search", "query": "al", "limit": 20}),
    ("findgroup dev", {"type": "group_search", "query": "dev", "limit": 20}),
    ("findgroup g12", {"type": "group_search", "query": "g12", "limit": 20}),
    ("chats", {"type": "conversations", "limit": 20}),
    ("chats 50", {"type": "conversations", "limit": 50}),
])
def test_lines_become_requests(line: str, expected: dict[str, Any]) -> None:
    cmd = parse(line)
    assert cmd is not None
    assert cmd.request == expected


def test_names_resolve_through_the_callback() -> None:
    resolve = names({"bob": 2})
    assert parse("chat bob hi", resolve).request == {"type": "chat", "to": 2, "text": "hi"}
    assert parse("accept bob", resolve).request == {"type": "friend_accept", "from": 2}
    assert parse("history bob", resolve).request == {"type": "history", "with": 2,
                                                      "limit": 20}
    with pytest.raises(UnknownUserError, match=r"unknown user 'carol'.*search carol") as e:
        parse("chat carol hi", resolve)
    assert e.value.name == "carol"  # what the console looks up on the server
    with pytest.raises(UnknownUserError):
        parse("addfriend carol", resolve)


@pytest.mark.parametrize("line", ["", "   ", "# a comment in a script"])
def test_blank_lines_and_comments_are_nothing(line: str) -> None:
    assert parse(line) is None


@pytest.mark.parametrize(("line", "message"), [
    ("chat", r"usage: chat ID\|NAME TEXT"),
    ("chat 2", r"usage: chat ID\|NAME TEXT"),
    ("chat 0 hi", "out of range"),
    ("broadcast", "usage: broadcast TEXT"),
    ("register", "usage: register NAME"),
    ("login a b", "too many arguments"),
    ("who me", "too many arguments"),
    ("joingroup x", "a group id must be a number"),
    ("joingroup", "usage: joingroup GID"),
    ("groupchat 4", "usage: groupchat GID TEXT"),
    ("history", r"usage: history ID\|gGID \[N\]"),
    ("history 2 many", "N must be a number"),
    ("history 2 201", "N is at most 200"),
    ("addfriend 99999999999999999999", "out of range"),
    ("dance", "unknown command 'dance'; type 'help'"),
    ("help dance", "no command 'dance'"),
    ("login --remember", "usage: login"),
    ("login --forever alice", "unknown option '--forever'"),
    ("login alice bob --remember", "too many arguments"),
    ("register --remember alice", "unknown option '--remember'"),
    ("search", "usage: search NAME"),
    ("search a b", "too many arguments"),
    ("findgroup", r"usage: findgroup NAME\|GID"),
    ("chats 0", "out of range"),
    ("chats 101", "N is at most 100"),
    ("passwd now", "too many arguments"),
])
def test_bad_lines_say_what_to_type(line: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        parse(line)


def test_local_commands() -> None:
    assert parse("quit") is not None and parse("quit").request is None
    cmd = parse("help chat")
    assert cmd is not None and cmd.name == "help" and cmd.topic == "chat"


def test_help_has_one_line_per_command() -> None:
    assert list(HELP) == COMMANDS_IN_ISSUE
    text = help_text()
    for name in COMMANDS_IN_ISSUE:
        assert any(line.strip().startswith(HELP[name][0]) for line in text.splitlines())
    assert help_text("groupchat").startswith("groupchat GID TEXT\n")


# -- rendering ---------------------------------------------------------------------------


def roster() -> Roster:
    r = Roster()
    r.learn_reply({"type": "login"}, {
        "type": "login", "user": {"id": 1, "name": "alice"},
        "friends": [{"id": 2, "name": "bob", "online": True},
                    {"id": 3, "name": "carol", "online": False}],
        "groups": [{"id": 4, "name": "devs", "desc": "", "role": "creator",
                    "members": [{"id": 1, "name": "alice", "role": "creator"},
                                {"id": 2, "name": "bob", "role": "member"}]}],
        "requests": [{"from": 5, "name": "dave", "ts": TS}],
    })
    return r


def push(frame: dict[str, Any], r: Roster | None = None) -> str | None:
    r = r or roster()
    r.learn_push(frame)
    return render_push(frame, r, NOW, UTC)


def test_stamp_is_time_today_and_date_before() -> None:
    assert stamp(TS, NOW, UTC) == "12:34"
    assert stamp(TS - 86_400_000, NOW, UTC) == "2024-04-30 12:34"


def test_direct_message_shows_time_name_and_id() -> None:
    frame = {"type": "message", "id": 9, "from": 2, "name": "bob", "to": 1, "text": "hi",
             "ts": TS}
    assert push(frame) == "[12:34] bob (2): hi"


def test_group_message_shows_group_name() -> None:
    frame = {"type": "message", "id": 9, "from": 2, "name": "bob", "group": 4, "text": "yo",
             "ts": TS}
    assert push(frame) == "[12:34] [devs g4] bob (2): yo"
    frame["group"] = 77
    assert push(frame) == "[12:34] [group g77] bob (2): yo"


def test_broadcast_and_own_messages() -> None:
    r = roster()
    frame = {"type": "message", "id": 9, "from": 6, "name": "eve", "broadcast": True,
             "text": "all", "ts": TS}
    assert push(frame, r) == "[12:34] [broadcast] eve (6): all"
    mine = {"from": 1, "name": "alice", "to": 2, "text": "hey", "ts": TS}
    assert render_message(mine, r, NOW, UTC) == "[12:34] you -> bob (2): hey"


def test_untrusted_text_cannot_drive_the_terminal() -> None:
    assert clean("a\x1b[2Jb\x07\u202e") == "a^[[2Jb^G\\u202e"
    frame = {"type": "message", "id": 9, "from": 2, "name": "bob", "to": 1,
             "text": "line one\nline two\x1b[H", "ts": TS}
    assert push(frame) == "[12:34] bob (2): line one\n    line two^[[H"


@pytest.mark.parametrize(("frame", "text"), [
    ({"type": "presence", "user": 2, "name": "bob", "online": False},
     "[12:34] * bob (2) is offline."),
    ({"type": "friend_request", "from": 6, "name": "eve", "ts": TS},
     "[12:34] * eve (6) wants to be your friend: type 'accept 6' or 'decline 6'."),
    ({"type": "friend_added", "user": 6, "name": "eve", "online": True},
     "[12:34] * eve (6) is now your friend."),
    ({"type": "friend_declined", "user": 6, "name": "eve"},
     "[12:34] * eve (6) declined your friend request."),
    ({"type": "friend_removed", "user": 2, "name": "bob"},
     "[12:34] * bob (2) removed you from their friends."),
    ({"type": "group_joined", "group": 4, "user": 6, "name": "eve"},
     "[12:34] * eve (6) joined devs (g4)."),
    ({"type": "group_left", "group": 4, "user": 2, "name": "bob"},
     "[12:34] * bob (2) left devs (g4)."),
    ({"type": "kicked", "reason": "logged in from another place"},
     "[12:34] * You were logged out: logged in from another place."),
    ({"type": "error", "code": "idle_timeout", "message": "no data for too long; closing"},
     "Server error: no data for too long; closing."),
    ({"type": "synced", "count": 3}, None),
    ({"type": "surprise"}, "[12:34] * The server sent an event this client does not know: "
                           "surprise."),
])
def test_pushes(frame: dict[str, Any], text: str | None) -> None:
    # pushes without a timestamp are stamped with the current time
    assert push(frame) == text


def test_pushes_update_what_the_roster_knows() -> None:
    r = roster()
    push({"type": "presence", "user": 3, "name": "carol", "online": True}, r)
    push({"type": "friend_added", "user": 5, "name": "dave", "online": False}, r)
    push({"type": "group_joined", "group": 4, "user": 6, "name": "eve"}, r)
    assert r.friends == {2: True, 3: True, 5: False}
    assert r.requests == {}
    assert set(r.groups[4].members) == {1, 2, 6}
    assert r.resolve("EVE") == 6 and r.resolve("nobody") is None


def test_errors_are_sentences() -> None:
    error = {"type": "error", "req": 3, "code": "bad_credentials",
             "message": "wrong user or password"}
    assert render_error(error, "login") == "login failed: wrong user or password."
    assert render_error({"type": "error", "code": "x"}) == "Server error: x."
    limited = {"type": "error", "req": 4, "code": "rate_limited",
               "message": "you are searching too fast; slow down", "retry_after": 1.5}
    assert render_error(limited, "search") == (
        "search failed: you are searching too fast; slow down. Try again in 1.5 s.")


def test_login_summary() -> None:
    assert render_summary(roster(), 1) == "\n".join([
        "Friends: bob (2, online), carol (3, offline)",
        "Groups: devs (g4, 2 members)",
        "Friend requests: dave (5) (accept ID or decline ID)",
        "Offline messages: 1",
    ])
    assert render_summary(Roster(), 0) == ("Friends: none\nGroups: none\n"
                                           "Friend requests: none\nOffline messages: 0")


def reply(request: dict[str, Any], body: dict[str, Any], r: Roster | None = None) -> str | None:
    r = r or roster()
    frame = {"type": request["type"], "req": 1, **body}
    r.learn_reply(request, frame)
    return render_reply(request, frame, r, NOW, UTC)


def test_replies() -> None:
    assert reply({"type": "register", "name": "zed"}, {"id": 9, "name": "zed"}) == (
        "Registered zed with id 9. Log in with: login zed")
    assert reply({"type": "chat", "to": 2, "text": "hi"}, {"id": 5, "ts": TS}) == (
        "[12:34] you -> bob (2): hi")
    assert reply({"type": "group_chat", "group": 4, "text": "hi"}, {"id": 5, "ts": TS}) == (
        "[12:34] [devs g4] you: hi")
    assert reply({"type": "who"}, {"total": 2, "offset": 0, "users": [
        {"id": 1, "name": "alice"}, {"id": 9, "name": "zed"}]}) == (
        "Online now (2): alice (1), zed (9)")
    assert reply({"type": "friend_add", "to": 3},
                 {"status": "requested", "user": 3, "name": "carol"}) == (
        "Friend request sent to carol (3).")
    info = {"id": 8, "name": "ops", "desc": "on call", "creator": 1,
            "members": [{"id": 1, "name": "alice", "role": "creator", "online": True}]}
    r = roster()
    assert reply({"type": "group_create", "name": "ops"}, {"group": info}, r) == (
        "Created group ops (g8). Others join with: joingroup 8")
    assert reply({"type": "group_info", "group": 8}, {"group": info}, r) == (
        "Group ops (g8), created by alice (1): on call\n"
        "  1 member, 1 online:\n"
        "  alice (1) creator, online")
    assert reply({"type": "group_leave", "group": 8}, {"group": {"id": 8, "name": "ops"}},
                 r) == "Left ops (g8)."
    assert 8 not in r.groups
    assert reply({"type": "history", "with": 2, "limit": 20}, {"messages": [], "more": False}
                 ) == "No messages with bob (2)."


def test_friend_replies_name_users_never_seen_before() -> None:
    r = roster()
    assert reply({"type": "friend_add", "to": 7},
                 {"status": "requested", "user": 7, "name": "zed"}, r) == (
        "Friend request sent to zed (7).")
    assert r.resolve("zed") == 7 and 7 not in r.friends
    accepted = {"status": "accepted", "user": 8, "name": "yan",
                "friend": {"id": 8, "name": "yan", "online": True}}
    assert reply({"type": "friend_add", "to": 8}, accepted, r) == "yan (8) is now your friend."
    assert r.friends[8] is True
    assert reply({"type": "friend_decline", "from": 5}, {"user": 5, "name": "dave"}, r) == (
        "Declined the friend request from dave (5).")
    assert 5 not in r.requests
    assert reply({"type": "friend_remove", "id": 9}, {"user": 9, "name": "xia"}, r) == (
        "xia (9) is no longer your friend.")
    r.friends[9] = True
    reply({"type": "friend_remove", "id": 9}, {"user": 9, "name": "xia"}, r)
    assert 9 not in r.friends


def test_group_leave_reply_names_the_group() -> None:
    r = roster()
    # a group this client never saw: the reply carries its name
    assert reply({"type": "group_leave", "group": 12}, {"group": {"id": 12, "name": "ops"}},
                 r) == "Left ops (g12)."
    assert reply({"type": "group_leave", "group": 4}, {"group": {"id": 4, "name": "devs"}},
                 r) == "Left devs (g4)."
    assert 4 not in r.groups and r.group_names[4] == "devs"


# -- line editing -------------------------------------------------------------------------


def test_key_decoder_handles_split_escapes_and_utf8() -> None:
    keys = lineedit.KeyDecoder()
    assert keys.feed(b"ab\x1b[") == ["a", "b"]
    assert keys.feed(b"D\xe4\xbd") == ["<left>"]
    assert keys.feed(b"\xa0\r\n\x7f\x03") == ["\u4f60", "<enter>", "<backspace>", "<ctrl-c>"]
    assert keys.feed(b"\x1b[3~\x1bOH\x1bx") == ["<delete>", "<home>"]


def test_line_editor_edits_and_remembers() -> None:
    ed = lineedit.LineEditor()
    for key in "chat bob hi":
        ed.handle(key)
    for key in ["<left>", "<left>", "<backspace>", "X", "<end>", "!"]:
        ed.handle(key)
    assert ed.text == "chat bobXhi!"
    assert ed.handle("<kill-word>") is None and ed.text == "chat "
    assert ed.handle("<enter>") == "enter" and ed.take() == "chat "
    assert ed.handle("<ctrl-d>") == "eof"
    ed.handle("<up>")
    assert ed.text == "chat "
    ed.handle("<down>")
    assert ed.text == ""


def test_draw_wraps_and_puts_the_cursor_back() -> None:
    # "> abc" fills row 0, so the cursor after "abc" is at row 1, column 0
    seq, row = lineedit.draw("> ", "abcdefg", 3, columns=5)
    assert (seq, row) == ("> abcdefg\r", 1)
    seq, row = lineedit.draw("> ", "abcdefg", 1, columns=5)
    assert (seq, row) == ("> abcdefg\x1b[1A\r\x1b[3C", 0)
    # a line ending exactly at the margin moves on, out of the pending-wrap state
    seq, row = lineedit.draw("> ", "abcdefgh", 3, columns=5)
    assert (seq, row) == ("> abcdefgh\r\n\x1b[1A\r", 1)
    assert lineedit.erase(row) == "\x1b[1A\r\x1b[J"
    assert lineedit.display_width("你好ab") == 6


# -- search results, conversations ---------------------------------------------------------


def test_match_user_prefers_exact_names() -> None:
    users = [{"id": 7, "name": "Al"}, {"id": 1, "name": "alice"}, {"id": 9, "name": "alan"}]
    assert match_user("Al", users) == (7, [])
    assert match_user("AL", users) == (7, [])  # the one case-insensitive match
    assert match_user("alic", users[1:2]) == (1, [])  # the only candidate
    assert match_user("ala", []) == (None, [])
    uid, candidates = match_user("a", users)
    assert uid is None and [u["id"] for u in candidates] == [7, 1, 9]
    # two names equal but for case, neither typed exactly: still a choice
    twins = [{"id": 3, "name": "Bob"}, {"id": 4, "name": "BOB"}]
    assert match_user("bob", twins) == (None, twins)
    assert match_user("BOB", twins) == (4, [])


def test_user_search_reply() -> None:
    r = roster()
    request = {"type": "user_search", "query": "a", "limit": 20}
    users = [{"id": 1, "name": "alice", "friend": False},
             {"id": 2, "name": "bob", "friend": True, "online": True},
             {"id": 3, "name": "carol", "friend": True},
             {"id": 7, "name": "Alan", "friend": False}]
    assert reply(request, {"users": users, "more": True}, r) == "\n".join([
        "Users whose name starts with 'a':",
        "  alice (1), you",
        "  bob (2), friend, online",
        "  carol (3), friend, offline",
        "  Alan (7)",
        "  (more match; type more of the name)",
    ])
    assert r.resolve("Alan") == 7  # learnt: 'chat Alan' needs no second search
    assert reply(request, {"users": [], "more": False}, r) == "No user's name starts with 'a'."


def test_group_search_reply() -> None:
    r = roster()
    request = {"type": "group_search", "query": "g12", "limit": 20}
    groups = [{"id": 12, "name": "ops", "desc": "on call\nnights", "members": 1,
               "member": False},
              {"id": 4, "name": "devs", "desc": "", "members": 2, "member": True}]
    assert reply(request, {"groups": groups, "more": False}, r) == "\n".join([
        "Groups matching 'g12':",
        "  ops (g12), 1 member, join with: joingroup 12: on call nights",
        "  devs (g4), 2 members, you are a member",
    ])
    assert r.group_label(12) == "ops (g12)"
    assert reply(request, {"groups": [], "more": False}, r) == (
        "No group named 'g12' or with that id.")


def test_conversations_reply() -> None:
    r = roster()
    request = {"type": "conversations", "limit": 20}
    chats = [
        {"kind": "direct", "id": 8, "name": "hal", "unread": 3,
         "last": {"id": 41, "ts": TS, "from": 8, "name": "hal", "text": "lunch?\x1b[2J"}},
        {"kind": "group", "id": 4, "name": "devs", "unread": 1000,
         "last": {"id": 40, "ts": TS - 86_400_000, "from": 2, "name": "bob",
                  "text": "hi\nall"}},
        {"kind": "direct", "id": 2, "name": "bob", "unread": 0,
         "last": {"id": 30, "ts": TS, "from": 1, "name": "alice", "text": "see you"}},
        {"kind": "direct", "id": 1, "name": "alice", "unread": 0,
         "last": {"id": 20, "ts": TS, "from": 1, "name": "alice", "text": "todo"}},
    ]
    assert reply(request, {"conversations": chats, "more": True}, r) == "\n".join([
        "Chats, newest first:",
        "  [12:34] hal (8), 3 unread: lunch?^[[2J",
        "  [2024-04-30 12:34] devs (g4), 999+ unread: bob (2): hi all",
        "  [12:34] bob (2): you: see you",
        "  [12:34] notes to yourself: you: todo",
        "  (older conversations not shown; ask for more with: chats N)",
    ])
    assert r.resolve("hal") == 8
    assert reply(request, {"conversations": [], "more": False}, r) == (
        "No conversations yet. Start one with: chat NAME TEXT")
