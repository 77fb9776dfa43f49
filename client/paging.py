"""Lists the server hands out a page at a time (R8): friends, groups, group members.

Pure functions, no I/O: which request fetches the page after a reply, and how the
pages of one list add up to one reply. The console sends the requests; the roster
and the renderer see only whole lists (or say that one stopped short).
"""

from __future__ import annotations

from typing import Any

from qqchat_client.roster import Roster

Frame = dict[str, Any]

#: the largest pages the server gives: ``friends``, ``groups``, ``group_info`` members
FRIENDS_PAGE = 1000
GROUPS_PAGE = 200
MEMBERS_PAGE = 500
#: at most this many pages of one list: a server that always says "more" is not followed
MAX_PAGES = 20

#: the request types whose replies come in pages
PAGED = frozenset({"friends", "groups", "group_info"})


def _id(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _entries(items: Any) -> list[Frame]:
    return [x for x in items or [] if isinstance(x, dict) and _id(x.get("id")) is not None]


def next_page(request: Frame, reply: Frame) -> Frame | None:
    """The request for the page after ``reply`` (the answer to ``request``), or None when
    the list is whole. A page that brought nothing ends it too: asking again would get
    the same page."""
    typ = request.get("type")
    if typ in ("friends", "groups"):
        items = _entries(reply.get(typ))
        if reply.get("more") is not True or not items:
            return None
        return {**request, "after": items[-1]["id"]}
    if typ == "group_info":
        info = reply.get("group")
        if not isinstance(info, dict):
            return None
        members = _entries(info.get("members"))
        if info.get("more_members") is not True or not members:
            return None
        offset = _id(request.get("offset")) or 0
        return {**request, "offset": offset + len(members)}
    return None


def merge(reply: Frame, page: Frame) -> Frame:
    """``reply`` (the pages so far) and the next ``page`` as one reply: the entries of
    both, each id once; ``more``, ``member_count`` and ``more_members`` from the page."""
    typ = reply.get("type")
    if typ in ("friends", "groups"):
        return {**page, typ: _unique([*_entries(reply.get(typ)), *_entries(page.get(typ))])}
    if typ == "group_info":
        old, new = reply.get("group"), page.get("group")
        if not isinstance(old, dict) or not isinstance(new, dict):
            return page
        members = _unique([*_entries(old.get("members")), *_entries(new.get("members"))])
        return {**page, "group": {**new, "members": members}}
    return page


def _unique(items: list[Frame]) -> list[Frame]:
    """Entries in order, an id seen twice kept once (the list moved between two pages)."""
    seen: set[int] = set()
    out = []
    for item in items:
        if item["id"] not in seen:
            seen.add(item["id"])
            out.append(item)
    return out


def login_rest(roster: Roster) -> Frame | None:
    """After a login: the request for the next page of friends, then of groups, while
    the login reply (and the pages since) said there are more; None when all are in."""
    if roster.friends_more:
        return {"type": "friends", "limit": FRIENDS_PAGE, "after": roster.friends_after}
    if roster.groups_more:
        return {"type": "groups", "limit": GROUPS_PAGE, "after": roster.groups_after}
    return None
