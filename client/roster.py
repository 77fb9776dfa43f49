"""What the client knows about users and groups, learnt from every frame it sees.

Names typed in commands and shown on screen come from here first: the login
summary, friend lists, group members, ``who`` results, searches, conversations
and message senders. A name not seen yet is looked up with ``user_search``
(``match_user`` decides what the answer means).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Frame = dict[str, Any]


@dataclass
class Member:
    name: str
    role: str = "member"
    online: bool = False


@dataclass
class Group:
    """A group as last seen. ``members`` may be only its first members (the login reply
    and ``groups`` list 20): ``member_count`` is how many it has, ``more_members``
    whether ``members`` stops short of them."""

    id: int
    name: str
    desc: str = ""
    role: str | None = None
    creator: int | None = None
    members: dict[int, Member] = field(default_factory=dict)
    member_count: int = 0
    more_members: bool = False


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def reply_user(request: Frame, reply: Frame, field: str) -> int | None:
    """The other user of a friend reply: its ``user``, else the request's ``field``."""
    uid = _int(reply.get("user"))
    return uid if uid is not None else _int(request.get(field))


def left_group(request: Frame, reply: Frame) -> int | None:
    """The group a ``group_leave`` reply is about: ``{"id", "name"}``, or the request's."""
    info = reply.get("group")
    gid = _int(info.get("id")) if isinstance(info, dict) else _int(info)
    return gid if gid is not None else _int(request.get("group"))


def match_user(name: str, users: Any) -> tuple[int | None, list[Frame]]:
    """What a typed name means among ``user_search`` results (prefix matches).

    An exact match wins (case-sensitive, then a single case-insensitive one); else
    a single candidate is taken. Returns (id, []) when decided, else (None, the
    candidates to choose from: none, or several).
    """
    found = [u for u in users or [] if isinstance(u, dict) and _int(u.get("id")) is not None
             and isinstance(u.get("name"), str)]
    exact = [u for u in found if u["name"] == name]
    if len(exact) == 1:
        return exact[0]["id"], []
    folded = name.casefold()
    loose = [u for u in found if u["name"].casefold() == folded]
    if len(loose) == 1:
        return loose[0]["id"], []
    if loose:
        return None, loose
    if len(found) == 1:
        return found[0]["id"], []
    return None, found


class Roster:
    """The logged-in user, their friends, groups and pending requests, and every name seen."""

    def __init__(self) -> None:
        self.me: int | None = None
        self.my_name: str | None = None
        self.names: dict[int, str] = {}
        self.friends: dict[int, bool] = {}  # id -> online
        self.groups: dict[int, Group] = {}  # the groups I am a member of
        self.group_names: dict[int, str] = {}  # every group seen, mine or not
        self.requests: dict[int, str] = {}  # pending requests to me: id -> name
        # the login reply lists the first friends and groups: more to page in after these ids
        self.friends_more = False
        self.friends_after = 0
        self.groups_more = False
        self.groups_after = 0

    # -- queries ------------------------------------------------------------

    def user_label(self, uid: int | None, name: str | None = None) -> str:
        """``alice (1)``, or ``user 1`` when the name was never seen."""
        if uid is None:
            return name or "someone"
        name = name or self.names.get(uid)
        return f"{name} ({uid})" if name else f"user {uid}"

    def group_label(self, gid: int | None) -> str:
        """``devs (g3)``, or ``group g3`` for a group never seen."""
        if gid is None:
            return "a group"
        name = self.group_names.get(gid)
        return f"{name} (g{gid})" if name else f"group g{gid}"

    def resolve(self, name: str) -> int | None:
        """A user id for a name seen before: exact match, else a unique case-insensitive one."""
        exact = [uid for uid, n in self.names.items() if n == name]
        if exact:
            return exact[0]
        folded = name.casefold()
        loose = [uid for uid, n in self.names.items() if n.casefold() == folded]
        return loose[0] if len(loose) == 1 else None

    # -- learning -----------------------------------------------------------

    def reset(self) -> None:
        """Forget the session (logout, kick); names stay, they never change."""
        self.me = self.my_name = None
        self.friends.clear()
        self.groups.clear()
        self.requests.clear()
        self.friends_more = self.groups_more = False
        self.friends_after = self.groups_after = 0

    def _name(self, uid: Any, name: Any) -> None:
        uid = _int(uid)
        if uid is not None and isinstance(name, str) and name:
            self.names[uid] = name

    def _group(self, info: Any, mine: bool | None = None) -> Group | None:
        """Record a group object from a reply; ``mine`` None means: decide from members."""
        if not isinstance(info, dict) or _int(info.get("id")) is None:
            return None
        gid = info["id"]
        name = info.get("name") if isinstance(info.get("name"), str) else f"g{gid}"
        group = Group(gid, name, info.get("desc") or "", info.get("role"),
                      _int(info.get("creator")))
        for m in info.get("members") or []:
            if isinstance(m, dict) and _int(m.get("id")) is not None:
                self._name(m["id"], m.get("name"))
                group.members[m["id"]] = Member(str(m.get("name", "")),
                                                str(m.get("role", "member")),
                                                bool(m.get("online")))
        count = _int(info.get("member_count"))
        group.member_count = max(count, len(group.members)) if count is not None \
            else len(group.members)
        group.more_members = info.get("more_members") is True
        self.group_names[gid] = name
        if mine is None:
            # a group of many members need not list me among the first ones
            mine = gid in self.groups or (self.me is not None and self.me in group.members)
        if mine:
            if group.role is None and self.me in group.members:
                group.role = group.members[self.me].role
            if group.role is None and group.creator is not None:
                group.role = "creator" if group.creator == self.me else "member"
            old = self.groups.get(gid)
            if old is not None and group.creator is None:
                group.creator = old.creator
            self.groups[gid] = group
        return group

    def _set_online(self, uid: int, online: bool) -> None:
        """A friend's presence. Groups that list them are updated; a group whose list
        stops before them is not (``group GID`` fetches every member with their state)."""
        if uid in self.friends:
            self.friends[uid] = online
        for group in self.groups.values():
            if uid in group.members:
                group.members[uid].online = online

    def learn_reply(self, request: Frame, reply: Frame) -> None:
        """Update from a successful reply to ``request``."""
        typ = request.get("type")
        if typ == "login":
            self.reset()
            user = reply.get("user") or {}
            self.me, self.my_name = _int(user.get("id")), user.get("name")
            self._name(self.me, self.my_name)
            self.learn_friends(reply.get("friends"), reply.get("friends_more") is True)
            self.learn_groups(reply.get("groups"), reply.get("groups_more") is True)
            for r in reply.get("requests") or []:
                if isinstance(r, dict) and _int(r.get("from")) is not None:
                    self._name(r["from"], r.get("name"))
                    self.requests[r["from"]] = str(r.get("name", ""))
        elif typ == "logout":
            self.reset()
        elif typ == "register":
            self._name(reply.get("id"), reply.get("name"))
        elif typ == "who":
            for u in reply.get("users") or []:
                if isinstance(u, dict):
                    self._name(u.get("id"), u.get("name"))
        elif typ == "friends":
            # the first page replaces what was known; a page ``after`` one adds to it
            self.learn_friends(reply.get("friends"), reply.get("more") is True,
                               first="after" not in request)
        elif typ in ("friend_add", "friend_accept"):
            self._name(reply.get("user"), reply.get("name"))
            friend = reply.get("friend")
            if isinstance(friend, dict) and _int(friend.get("id")) is not None:
                self._name(friend["id"], friend.get("name"))
                self.friends[friend["id"]] = bool(friend.get("online"))
                self.requests.pop(friend["id"], None)
        elif typ == "friend_decline":
            self._name(reply.get("user"), reply.get("name"))
            self.requests.pop(reply_user(request, reply, "from") or 0, None)
        elif typ == "friend_remove":
            self._name(reply.get("user"), reply.get("name"))
            self.friends.pop(reply_user(request, reply, "id") or 0, None)
        elif typ in ("group_create", "group_join", "group_info"):
            self._group(reply.get("group"), mine=True if typ != "group_info" else None)
        elif typ == "group_leave":
            info = reply.get("group")
            if isinstance(info, dict) and isinstance(info.get("name"), str) \
                    and _int(info.get("id")) is not None:
                self.group_names[info["id"]] = info["name"]
            self.groups.pop(left_group(request, reply) or 0, None)
        elif typ == "groups":
            self.learn_groups(reply.get("groups"), reply.get("more") is True,
                              first="after" not in request)
        elif typ == "history":
            for m in reply.get("messages") or []:
                if isinstance(m, dict):
                    self._name(m.get("from"), m.get("name"))
        elif typ == "user_search":
            for u in reply.get("users") or []:
                if isinstance(u, dict):
                    self._name(u.get("id"), u.get("name"))
        elif typ == "group_search":
            for g in reply.get("groups") or []:
                if isinstance(g, dict) and _int(g.get("id")) is not None \
                        and isinstance(g.get("name"), str):
                    self.group_names[g["id"]] = g["name"]
        elif typ == "conversations":
            for c in reply.get("conversations") or []:
                if not isinstance(c, dict):
                    continue
                if c.get("kind") == "group":
                    if _int(c.get("id")) is not None and isinstance(c.get("name"), str):
                        self.group_names[c["id"]] = c["name"]
                else:
                    self._name(c.get("id"), c.get("name"))
                last = c.get("last")
                if isinstance(last, dict):
                    self._name(last.get("from"), last.get("name"))

    def learn_friends(self, friends: Any, more: bool = False, first: bool = True) -> None:
        """A page of friends: the first one replaces the list, later ones add to it.
        ``more``: the server has more after this page (``friends_after``)."""
        if not isinstance(friends, list):
            return
        if first:
            self.friends.clear()
            self.friends_after = 0
        got = [f for f in friends if isinstance(f, dict) and _int(f.get("id")) is not None]
        for f in got:
            self._name(f["id"], f.get("name"))
            self.friends[f["id"]] = bool(f.get("online"))
        if got:
            self.friends_after = got[-1]["id"]
        # a page that brought nothing cannot move on: stop rather than ask again
        self.friends_more = more and bool(got)

    def learn_groups(self, groups: Any, more: bool = False, first: bool = True) -> None:
        """A page of my groups (each with its first members), as ``learn_friends``."""
        if not isinstance(groups, list):
            return
        if first:
            self.groups.clear()
            self.groups_after = 0
        got = [g for g in (self._group(g, mine=True) for g in groups) if g is not None]
        if got:
            self.groups_after = got[-1].id
        self.groups_more = more and bool(got)

    def learn_push(self, frame: Frame) -> None:
        """Update from a server push (a frame with no ``req``)."""
        typ = frame.get("type")
        if typ == "message":
            self._name(frame.get("from"), frame.get("name"))
        elif typ == "presence":
            self._name(frame.get("user"), frame.get("name"))
            uid = _int(frame.get("user"))
            if uid is not None:
                self._set_online(uid, bool(frame.get("online")))
        elif typ == "friend_request":
            self._name(frame.get("from"), frame.get("name"))
            uid = _int(frame.get("from"))
            if uid is not None:
                self.requests[uid] = str(frame.get("name", ""))
        elif typ in ("friend_added", "friend_declined", "friend_removed"):
            self._name(frame.get("user"), frame.get("name"))
            uid = _int(frame.get("user"))
            if uid is None:
                return
            if typ == "friend_added":
                self.friends[uid] = bool(frame.get("online", True))
                self.requests.pop(uid, None)
            elif typ == "friend_removed":
                self.friends.pop(uid, None)
        elif typ in ("group_joined", "group_left"):
            self._name(frame.get("user"), frame.get("name"))
            uid, gid = _int(frame.get("user")), _int(frame.get("group"))
            group = self.groups.get(gid) if gid is not None else None
            if group is None or uid is None:
                return
            listed = uid in group.members
            if typ == "group_joined":
                if not listed:
                    group.member_count += 1
                # newcomers come last in join order: only a whole list has room for them
                if not group.more_members:
                    group.members[uid] = Member(str(frame.get("name", "")), "member", True)
            elif listed or group.more_members:
                group.members.pop(uid, None)
                group.member_count = max(len(group.members), group.member_count - 1)
        elif typ == "kicked":
            self.reset()
