"""Group creation, membership and group info (F10); group chat is in messages.py."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from qqchat.codec import encode
from qqchat.errors import ChatError
from qqchat.names import check_name
from qqchat.relay.base import Relay
from qqchat.services.limits import Limits
from qqchat.session import Session
from qqchat.storage.groups import GroupStore


class GroupService:
    def __init__(self, store: GroupStore, relay: Relay, clock: IReactorTime,
                 limits: Limits) -> None:
        self._store = store
        self._relay = relay
        self._clock = clock
        self._limits = limits

    def _now(self) -> int:
        return int(self._clock.seconds() * 1000)

    async def info(self, gid: int, offset: int = 0, limit: int | None = None
                   ) -> dict[str, Any]:
        """The group, with one page of its members in join order (R8)."""
        group = await self._store.group(gid)
        if group is None:
            raise ChatError("no_such_group", f"there is no group {gid}")
        limit = limit or self._limits.members_page
        total, members = await self._store.group_members(gid, offset, limit)
        online = await self._relay.online([uid for uid, _, _ in members])
        return {
            "id": int(group[0]), "name": group[1], "desc": group[2], "creator": int(group[3]),
            "members": [{"id": uid, "name": name, "role": role, "online": uid in online}
                        for uid, name, role in members],
            "member_count": total, "more_members": offset + len(members) < total,
        }

    async def create(self, session: Session, name: str, desc: str) -> dict[str, Any]:
        lim = self._limits
        if not name.strip() or len(name) > lim.group_name_max:
            raise ChatError("bad_name", f"a group name is 1-{lim.group_name_max} characters")
        check_name(name, "a group name")
        if len(desc) > lim.group_desc_max:
            raise ChatError("too_long", f"a group description is at most {lim.group_desc_max} "
                                        "characters")
        assert session.user_id is not None
        gid = await self._store.create_group(name, desc, session.user_id, self._now(),
                                             lim.groups_created_max, lim.groups_joined_max)
        if gid == "too_many_created":
            raise ChatError("too_many_groups_created", "you have created the most groups a "
                                                       f"user may ({lim.groups_created_max})")
        if gid == "too_many_joined":
            raise self._too_many()
        assert isinstance(gid, int)
        return {"group": await self.info(gid)}

    def _too_many(self) -> ChatError:
        return ChatError("too_many_groups", "you are in the most groups a user may be in "
                                            f"({self._limits.groups_joined_max}); leave one "
                                            "first")

    async def join(self, session: Session, gid: int) -> dict[str, Any]:
        uid = session.user_id
        assert uid is not None
        outcome = await self._store.join_group(gid, uid, self._now(),
                                               self._limits.group_members_max,
                                               self._limits.groups_joined_max)
        if outcome == "too_many":
            raise self._too_many()
        if outcome == "full":
            raise ChatError("group_full", f"group {gid} has the most members a group may "
                                          f"have ({self._limits.group_members_max})")
        if outcome == "no_group":
            raise ChatError("no_such_group", f"there is no group {gid}")
        if outcome == "already":
            raise ChatError("already_member", f"you are already in group {gid}")
        info = await self.info(gid)
        # every member, not only the page of them the reply lists
        members = await self._store.group_member_ids(gid)
        others = [m for m in members if m != uid]
        if others:
            self._relay.notify(others, encode({"type": "group_joined", "group": gid,
                                               "user": uid, "name": session.name}))
        return {"group": info}

    async def leave(self, session: Session, gid: int) -> dict[str, Any]:
        uid = session.user_id
        assert uid is not None
        group = await self._store.group(gid)
        if group is None:
            raise ChatError("no_such_group", f"there is no group {gid}")
        if not await self._store.leave_group(gid, uid):
            raise ChatError("not_member", f"you are not a member of group {gid}")
        members = await self._store.group_member_ids(gid)
        self._relay.notify(members, encode({"type": "group_left", "group": gid, "user": uid,
                                            "name": session.name}))
        return {"group": {"id": gid, "name": group[1]}}

    async def mine(self, session: Session, after: int, limit: int) -> dict[str, Any]:
        """One page of the user's groups by id, each with its first members."""
        assert session.user_id is not None
        groups = await self._store.groups_of(session.user_id, after, limit + 1,
                                             self._limits.members_preview)
        more = len(groups) > limit
        del groups[limit:]
        ids = {m["id"] for g in groups for m in g["members"]}
        online = await self._relay.online(ids)
        for g in groups:
            for m in g["members"]:
                m["online"] = m["id"] in online
        return {"groups": groups, "more": more}
