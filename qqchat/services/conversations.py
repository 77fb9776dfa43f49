"""The conversation list (K3 ``conversations``): what a chat app's sidebar shows."""

from __future__ import annotations

from typing import Any

from qqchat.errors import ChatError
from qqchat.session import Session
from qqchat.storage.directory import DirectoryStore
from qqchat.storage.log import KIND_DIRECT


class ConversationService:
    def __init__(self, directory: DirectoryStore) -> None:
        self._directory = directory

    async def page(self, session: Session, before: int | None, limit: int) -> dict[str, Any]:
        """Newest first. Unread counts start after the position this session has
        acknowledged (what the server knows the client holds)."""
        uid = session.user_id
        if uid is None:
            raise ChatError("not_logged_in", "log in first")
        rows = await self._directory.conversations(
            uid, session.acked, before if before is not None else 2**62, limit + 1)
        return {
            "conversations": [
                {"kind": "direct" if c.kind == KIND_DIRECT else "group", "id": c.id,
                 "name": c.name, "unread": c.unread,
                 "last": {"id": c.last_id, "ts": c.last_ts, "from": c.last_from,
                          "name": c.last_name, "text": c.last_text}}
                for c in rows[:limit]],
            "more": len(rows) > limit,
        }
