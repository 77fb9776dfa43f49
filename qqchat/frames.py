"""The shape of replies and errors on the wire, shared by the dispatcher, the
connection and the hot path (which builds its replies itself)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from twisted.logger import Logger
from twisted.python.failure import Failure

from qqchat.errors import ChatError

Frame = dict[str, Any]


@runtime_checkable
class Reply(Protocol):
    """A reply known later, without a Deferred: what the hot path's requests return
    (``services/hotpath.py``). It tells one listener its frame (an error frame if the
    request failed), once; a listener named after that is told at once."""

    def then(self, answered: Callable[[Frame], object]) -> None: ...

#: a request without ``req``: its reply has none either
MISSING: Any = object()
_REPLY_TYPES = {"ping": "pong"}
_log = Logger(namespace="qqchat.dispatch")


def reply_frame(typ: str, req: Any, body: Frame) -> Frame:
    frame: Frame = {"type": _REPLY_TYPES.get(typ, typ)}
    if req is not MISSING:
        frame["req"] = req
    frame.update(body)
    return frame


def error_frame(code: str, message: str, req: Any = MISSING, **extra: Any) -> Frame:
    frame: Frame = {"type": "error"}
    if req is not MISSING:
        frame["req"] = req
    frame["code"] = code
    frame["message"] = message
    frame.update(extra)
    return frame


def failure_frame(failure: Failure, typ: str, req: Any) -> Frame:
    """The error a client sees for a failed request: a ``ChatError`` as it is, anything
    else logged here once and reported as ``internal`` (no traceback leaves)."""
    if failure.check(ChatError):
        e: ChatError = failure.value
        return error_frame(e.code, e.message, req=req, **e.extra)
    _log.failure("handler for {type} failed", failure, type=typ)
    return error_frame("internal", "internal server error", req=req)
