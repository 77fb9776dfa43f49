"""The interface services use to reach users, wherever they are logged in.

The single-node daemon uses ``LocalRelay``; cluster mode swaps in a Redis-backed
implementation of the same methods. Pushes are a fast path only: the message
log is the record, so a push that does not arrive is resent at next login.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import Protocol

from qqchat.session import Session


class RelayListener(Protocol):
    """What a cluster relay asks of the services above it. They are built after the
    relay (they need it), so it is handed over with ``listen``, before the start."""

    def resync(self, session: Session) -> Awaitable[object]:
        """Resend ``session`` what the log has that pushes may have lost."""

    def gone_offline(self, user_id: int, name: str) -> Awaitable[object]:
        """A dead node's user is offline now: tell the user's friends."""


class Relay(Protocol):
    #: True when pushes reach a session in log order (one node); False when they
    #: can cross (several nodes), and acks must be checked against what was seen
    ordered: bool

    async def claim(self, session: Session, kick: bool) -> bool:
        """Make ``session`` its user's one session, kicking any other if ``kick``.

        Returns False (and changes nothing) when another session exists and
        ``kick`` is False.
        """

    async def release(self, session: Session) -> bool:
        """Forget ``session``; True if it was its user's current session."""

    def deliver(self, user_ids: Iterable[int], msg_id: int, line: bytes) -> None:
        """Push a stored message to those of ``user_ids`` that are online."""

    def deliver_all(self, msg_id: int, line: bytes, exclude: int) -> None:
        """Push a stored broadcast to every online user but ``exclude``."""

    def notify(self, user_ids: Iterable[int], line: bytes) -> None:
        """Push an unstored event (presence, friend request) to online users."""

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        """Which of ``user_ids`` are online anywhere."""

    async def who(self, offset: int, limit: int) -> tuple[int, list[tuple[int, str]]]:
        """Total online, and one page of (id, name) ordered by id."""
