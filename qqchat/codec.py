"""JSON-lines encoding. One place, so the codec can be swapped for speed."""

from __future__ import annotations

from typing import Any

import orjson

DecodeError = orjson.JSONDecodeError


def encode(frame: dict[str, Any]) -> bytes:
    """Encode one frame as a newline-terminated UTF-8 JSON line."""
    return orjson.dumps(frame, option=orjson.OPT_APPEND_NEWLINE)


def decode(line: bytes) -> Any:
    """Decode one line; raises DecodeError on bad JSON or invalid UTF-8."""
    return orjson.loads(line)
