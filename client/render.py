"""Server frames as lines a person reads: times, names with ids, group names, sentences.

Pure functions of (frame, roster, now): the console decides when to print, this
module only decides what. Text from other users is cleaned of control
characters so nobody can move the reader's cursor or clear their screen.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime, tzinfo
from typing import Any

from qqchat_client.roster import Roster, left_group, reply_user

Frame = dict[str, Any]

_INDENT = "    "


def clean(text: str) -> str:
    """Make untrusted text safe for a terminal: controls become ``^X`` or ``\\uXXXX``.

    Newlines are kept (the caller indents continuation lines); tabs become spaces.
    """
    out = []
    for ch in text:
        if ch == "\n":
            out.append(ch)
        elif ch == "\t":
            out.append(" ")
        elif ch < " " or ch == "\x7f":
            out.append("^" + chr(ord(ch) ^ 0x40))
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _body(text: Any) -> str:
    lines = clean(str(text)).split("\n")
    return ("\n" + _INDENT).join(lines)


def stamp(ts_ms: Any, now: float, tz: tzinfo | None = None) -> str:
    """``HH:MM`` for today, ``YYYY-MM-DD HH:MM`` for older (history, backlog)."""
    if not isinstance(ts_ms, (int, float)) or isinstance(ts_ms, bool):
        ts_ms = now * 1000
    when = datetime.fromtimestamp(ts_ms / 1000, tz)
    today = datetime.fromtimestamp(now, tz).date()
    if when.date() == today:
        return when.strftime("%H:%M")
    return when.strftime("%Y-%m-%d %H:%M")


def _user(roster: Roster, uid: Any, name: Any = None) -> str:
    uid = uid if isinstance(uid, int) and not isinstance(uid, bool) else None
    return clean(roster.user_label(uid, name if isinstance(name, str) else None))


def _group(roster: Roster, gid: Any) -> str:
    gid = gid if isinstance(gid, int) and not isinstance(gid, bool) else None
    return clean(roster.group_label(gid))


def render_message(frame: Frame, roster: Roster, now: float, tz: tzinfo | None = None) -> str:
    """``[12:34] alice (1): hi``, with ``[devs g3]`` or ``[broadcast]`` before the sender,
    and ``you -> bob (2)`` for one's own messages (history)."""
    sender = frame.get("from")
    mine = roster.me is not None and sender == roster.me
    where = ""
    gid = frame.get("group")
    if isinstance(gid, int) and not isinstance(gid, bool):
        name = roster.group_names.get(gid)
        where = f"[{clean(name)} g{gid}] " if name else f"[group g{gid}] "
    elif frame.get("broadcast"):
        where = "[broadcast] "
    if mine:
        who = "you"
        if frame.get("to") is not None and not where:
            who += " -> " + _user(roster, frame["to"])
    else:
        who = _user(roster, sender, frame.get("name"))
    return f"[{stamp(frame.get('ts'), now, tz)}] {where}{who}: {_body(frame.get('text', ''))}"


def render_push(frame: Frame, roster: Roster, now: float, tz: tzinfo | None = None
                ) -> str | None:
    """One line (or a few) for a server push; None for frames the console handles itself."""
    typ = frame.get("type")
    if typ == "message":
        return render_message(frame, roster, now, tz)
    if typ in ("synced", "pong"):
        return None
    if typ == "error":
        return render_error(frame)
    at = f"[{stamp(None, now, tz)}] * "
    if typ == "presence":
        state = "online" if frame.get("online") else "offline"
        return f"{at}{_user(roster, frame.get('user'), frame.get('name'))} is {state}."
    if typ == "friend_request":
        uid = frame.get("from")
        return (f"{at}{_user(roster, uid, frame.get('name'))} wants to be your friend: "
                f"type 'accept {uid}' or 'decline {uid}'.")
    if typ == "friend_added":
        return f"{at}{_user(roster, frame.get('user'), frame.get('name'))} is now your friend."
    if typ == "friend_declined":
        return (f"{at}{_user(roster, frame.get('user'), frame.get('name'))} "
                "declined your friend request.")
    if typ == "friend_removed":
        return (f"{at}{_user(roster, frame.get('user'), frame.get('name'))} "
                "removed you from their friends.")
    if typ in ("group_joined", "group_left"):
        verb = "joined" if typ == "group_joined" else "left"
        return (f"{at}{_user(roster, frame.get('user'), frame.get('name'))} {verb} "
                f"{_group(roster, frame.get('group'))}.")
    if typ == "server_shutdown":
        return f"{at}The server is shutting down."
    if typ == "kicked":
        reason = clean(str(frame.get("reason") or "the server ended the session"))
        return f"{at}You were logged out: {reason}."
    return f"{at}The server sent an event this client does not know: {clean(str(typ))}."


#: errors said in the client's own words (with what to do), not the server's message
ERROR_WORDS = {
    "too_many_groups": "you are in as many groups as the server allows; leave one first "
                       "(leavegroup GID)",
    "too_many_groups_created": "you have created as many groups as the server allows",
    "too_many_friends": "you or they have as many friends as the server allows",
}


def render_error(frame: Frame, command: str | None = None) -> str:
    """An error frame as a sentence: ``login failed: wrong user or password.``"""
    words = ERROR_WORDS.get(str(frame.get("code")))
    message = words or clean(str(frame.get("message") or frame.get("code")
                                 or "unknown error")).strip()
    if message[-1:] not in (".", "!", "?"):
        message += "."
    wait = frame.get("retry_after")
    if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0:
        message += f" Try again in {wait:g} s."
    if command:
        return f"{command} failed: {message}"
    return f"Server error: {message}"


def _online(flag: Any) -> str:
    return "online" if flag else "offline"


def render_friends(roster: Roster) -> str:
    if not roster.friends:
        return "Friends: none"
    items = [f"{clean(roster.names.get(uid, 'user'))} ({uid}, {_online(on)})"
             for uid, on in sorted(roster.friends.items())]
    return "Friends: " + ", ".join(items)


def render_groups_line(roster: Roster) -> str:
    if not roster.groups:
        return "Groups: none"
    items = [f"{clean(g.name)} (g{gid}, {_plural(g.member_count, 'member')})"
             for gid, g in sorted(roster.groups.items())]
    return "Groups: " + ", ".join(items)


def render_requests(roster: Roster) -> str:
    if not roster.requests:
        return "Friend requests: none"
    items = [f"{_user(roster, uid, name)}" for uid, name in sorted(roster.requests.items())]
    return "Friend requests: " + ", ".join(items) + " (accept ID or decline ID)"


def render_summary(roster: Roster, offline_count: int) -> str:
    """What the user sees once login and its backlog are done."""
    return "\n".join([
        render_friends(roster),
        render_groups_line(roster),
        render_requests(roster),
        f"Offline messages: {offline_count}",
    ])


def _group_detail(roster: Roster, info: Frame) -> str:
    gid = info.get("id")
    head = f"Group {clean(str(info.get('name', '')))} (g{gid})"
    if isinstance(info.get("creator"), int):
        head += f", created by {_user(roster, info['creator'])}"
    if info.get("desc"):
        head += f": {_body(info['desc'])}"
    lines = [head]
    members = [m for m in info.get("members") or [] if isinstance(m, dict)]
    online = sum(1 for m in members if m.get("online"))
    count = _count(info.get("member_count"), len(members))
    listed = f" ({len(members)} listed)" if len(members) < count else ""
    lines.append(f"  {_plural(count, 'member')}, {online} online{listed}:")
    for m in members:
        lines.append(f"  {_user(roster, m.get('id'), m.get('name'))} "
                     f"{clean(str(m.get('role', 'member')))}, {_online(m.get('online'))}")
    return "\n".join(lines)


def render_reply(request: Frame, reply: Frame, roster: Roster, now: float,
                 tz: tzinfo | None = None) -> str | None:
    """The success reply to one of the user's commands, as text; None when silent.

    ``roster`` has already learnt from the reply, so names from it are known here.
    """
    typ = request.get("type")
    if typ == "register":
        return (f"Registered {clean(str(reply.get('name')))} with id {reply.get('id')}. "
                f"Log in with: login {clean(str(reply.get('name')))}")
    if typ == "login":
        return f"Logged in as {_user(roster, roster.me, roster.my_name)}."
    if typ == "logout":
        return "Logged out."
    if typ == "who":
        users = [u for u in reply.get("users") or [] if isinstance(u, dict)]
        total = reply.get("total", len(users))
        text = f"Online now ({total}): " + (", ".join(
            _user(roster, u.get("id"), u.get("name")) for u in users) or "nobody")
        if isinstance(total, int) and total > len(users):
            text += f" (showing {len(users)})"
        return text
    if typ in ("chat", "broadcast", "group_chat"):
        echo: Frame = {"from": roster.me, "text": request.get("text", ""),
                       "ts": reply.get("ts")}
        if typ == "chat":
            echo["to"] = request.get("to")
        elif typ == "group_chat":
            echo["group"] = request.get("group")
        else:
            echo["broadcast"] = True
        line = render_message(echo, roster, now, tz)
        if reply.get("duplicate"):
            line += " (already sent)"
        return line
    if typ == "friend_add":
        other = _user(roster, reply_user(request, reply, "to"), reply.get("name"))
        if reply.get("status") == "accepted":
            return f"{other} is now your friend."
        return f"Friend request sent to {other}."
    if typ == "friend_accept":
        return f"{_user(roster, request.get('from'))} is now your friend."
    if typ == "friend_decline":
        other = _user(roster, reply_user(request, reply, "from"), reply.get("name"))
        return f"Declined the friend request from {other}."
    if typ == "friend_remove":
        other = _user(roster, reply_user(request, reply, "id"), reply.get("name"))
        return f"{other} is no longer your friend."
    if typ == "friends":
        return render_friends(roster)
    if typ == "group_create":
        info = reply.get("group") or {}
        return (f"Created group {_group(roster, info.get('id'))}. "
                f"Others join with: joingroup {info.get('id')}")
    if typ == "group_join":
        info = reply.get("group") or {}
        n = _count(info.get("member_count"), len(info.get("members") or []))
        return f"Joined group {_group(roster, info.get('id'))}, {_plural(n, 'member')}."
    if typ == "group_leave":
        return f"Left {_group(roster, left_group(request, reply))}."
    if typ == "group_info":
        return _group_detail(roster, reply.get("group") or {})
    if typ == "groups":
        if not roster.groups:
            return "You are in no groups. Create one with: creategroup NAME"
        lines = []
        for gid, g in sorted(roster.groups.items()):
            online = sum(1 for m in g.members.values() if m.online)
            # the list may hold only the first members: say whose state is counted
            among = f" of the first {len(g.members)}" if g.more_members else ""
            lines.append(f"g{gid} {clean(g.name)}: {_plural(g.member_count, 'member')}, "
                         f"{online}{among} online, you are {clean(g.role or 'member')}")
        return "\n".join(lines)
    if typ == "user_search":
        return render_user_search(request, reply, roster)
    if typ == "group_search":
        return render_group_search(request, reply)
    if typ == "conversations":
        return render_conversations(reply, roster, now, tz)
    if typ == "password_change":
        return ("Password changed; sessions saved with 'login --remember' elsewhere "
                "now need the new password.")
    if typ == "history":
        where = (_group(roster, request["group"]) if "group" in request
                 else _user(roster, request.get("with")))
        messages = [m for m in reply.get("messages") or [] if isinstance(m, dict)]
        if not messages:
            return f"No messages with {where}."
        n = len(messages)
        lines = [f"History with {where}, {n} message{'s' if n != 1 else ''}:"]
        lines += [render_message(m, roster, now, tz) for m in messages]
        if reply.get("more"):
            lines.append("(older messages not shown; ask for more with a bigger N)")
        return "\n".join(lines)
    return None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _count(value: Any, fallback: int) -> int:
    """A count from the server (``member_count``), else what the list holds."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= fallback:
        return value
    return fallback


def user_line(roster: Roster, user: Frame) -> str:
    """``alice (1), friend, online`` / ``Alan (7)`` / ``bob (2), you``."""
    text = _user(roster, user.get("id"), user.get("name"))
    if roster.me is not None and user.get("id") == roster.me:
        return text + ", you"
    if user.get("friend"):
        text += ", friend, " + _online(user.get("online"))
    return text


def render_user_search(request: Frame, reply: Frame, roster: Roster) -> str:
    query = clean(str(request.get("query", "")))
    users = [u for u in reply.get("users") or [] if isinstance(u, dict)]
    if not users:
        return f"No user's name starts with {query!r}."
    lines = [f"Users whose name starts with {query!r}:"]
    lines += ["  " + user_line(roster, u) for u in users]
    if reply.get("more"):
        lines.append("  (more match; type more of the name)")
    return "\n".join(lines)


def render_group_search(request: Frame, reply: Frame) -> str:
    query = clean(str(request.get("query", "")))
    groups = [g for g in reply.get("groups") or [] if isinstance(g, dict)]
    if not groups:
        return f"No group named {query!r} or with that id."
    lines = [f"Groups matching {query!r}:"]
    for g in groups:
        members = g.get("members")
        line = f"  {clean(str(g.get('name', '')))} (g{g.get('id')})"
        if isinstance(members, int) and not isinstance(members, bool):
            line += ", " + _plural(members, "member")
        line += ", you are a member" if g.get("member") else f", join with: joingroup {g.get('id')}"
        if g.get("desc"):
            line += ": " + clean(str(g["desc"])).replace("\n", " ")
        lines.append(line)
    if reply.get("more"):
        lines.append("  (more match; type more of the name)")
    return "\n".join(lines)


#: the server counts unread messages up to this many
UNREAD_CAP = 1000


def unread_label(count: Any) -> str:
    """``3 unread``, ``999+ unread``, or "" for none."""
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        return ""
    return "999+ unread" if count >= UNREAD_CAP else f"{count} unread"


def render_conversations(reply: Frame, roster: Roster, now: float,
                         tz: tzinfo | None = None) -> str:
    """One line per conversation, newest first (the server's order)::

        [12:34] bob (2), 3 unread: lunch?
        [2024-04-30 09:00] devs (g1): alice (1): hi all
    """
    chats = [c for c in reply.get("conversations") or [] if isinstance(c, dict)]
    if not chats:
        return "No conversations yet. Start one with: chat NAME TEXT"
    lines = ["Chats, newest first:"]
    for c in chats:
        last = c.get("last") if isinstance(c.get("last"), dict) else {}
        if c.get("kind") == "group":
            where = _group(roster, c.get("id"))
        elif c.get("id") == roster.me and roster.me is not None:
            where = "notes to yourself"
        else:
            where = _user(roster, c.get("id"), c.get("name"))
        unread = unread_label(c.get("unread"))
        head = f"  [{stamp(last.get('ts'), now, tz)}] {where}" + (f", {unread}" if unread else "")
        sender = last.get("from")
        if roster.me is not None and sender == roster.me:
            who = "you: "
        elif c.get("kind") == "group":
            who = _user(roster, sender, last.get("name")) + ": "
        else:
            who = ""
        text = clean(str(last.get("text", ""))).replace("\n", " ")
        lines.append(f"{head}: {who}{text}")
    if reply.get("more"):
        lines.append("  (older conversations not shown; ask for more with: chats N)")
    return "\n".join(lines)
