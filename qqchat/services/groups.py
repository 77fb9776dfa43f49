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
from qqchat.storage.store import Store


class GroupService:
    def __init__(self, store: Store, relay: Relay, clock: IReactorTime, limits: Limits) -> None:
        self._store = store
        self._relay = relay
        self._clock = clock
        self._limits = limits

    def _now(self) -> int:
        return int(self._clock.seconds() * 1000)

    async def info(self, gid: int) -> dict[str, Any]:
        group = await self._store.group(gid)
        if group is None:
            raise ChatError("no_such_group", f"there is no group {gid}")
        members = await self._store.group_members(gid)
        online = await self._relay.online([uid for uid, _, _ in members])
        return {
            "id": int(group[0]), "name": group[1], "desc": group[2], "creator": int(group[3]),
            "members": [{"id": uid, "name": name, "role": role, "online": uid in online}
                        for uid, name, role in members],
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
        gid = await self._store.create_group(name, desc, session.user_id, self._now())
        return {"group": await self.info(gid)}

    async def join(self, session: Session, gid: int) -> dict[str, Any]:
        uid = session.user_id
        assert uid is not None
        outcome = await self._store.join_group(gid, uid, self._now(),
                                               self._limits.group_members_max)
        if outcome == "full":
            raise ChatError("group_full", f"group {gid} has the most members a group may "
                                          f"have ({self._limits.group_members_max})")
        if outcome == "no_group":
            raise ChatError("no_such_group", f"there is no group {gid}")
        if outcome == "already":
            raise ChatError("already_member", f"you are already in group {gid}")
        info = await self.info(gid)
        self._tell_members(info, uid, {"type": "group_joined", "group": gid, "user": uid,
                                       "name": session.name})
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

    def _tell_members(self, info: dict[str, Any], except_uid: int,
                      frame: dict[str, Any]) -> None:
        others = [m["id"] for m in info["members"] if m["id"] != except_uid and m["online"]]
        if others:
            self._relay.notify(others, encode(frame))

    async def mine(self, session: Session) -> dict[str, Any]:
        assert session.user_id is not None
        groups = await self._store.groups_of(session.user_id)
        ids = {m["id"] for g in groups for m in g["members"]}
        online = await self._relay.online(ids)
        for g in groups:
            for m in g["members"]:
                m["online"] = m["id"] in online
        return {"groups": groups}
