"""The one exception type whose code and message reach a client verbatim."""

from __future__ import annotations

from typing import Any


class ChatError(Exception):
    """A refusal the client should see: a stable snake_case ``code`` and a human message.

    Anything else raised below the dispatcher is logged and reported as ``internal``,
    so tracebacks never leak to clients.
    """

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.extra = extra


class UnavailableError(ChatError):
    """A backing server (database, Redis) is unreachable; the request may be retried."""

    def __init__(self, what: str) -> None:
        super().__init__("unavailable", f"{what} is unavailable, try again shortly")


class StartupError(Exception):
    """The daemon cannot start for a reason the operator must fix; the message says
    which (logged without a traceback)."""
