"""Input limits shared by the services and documented in docs/protocol.md."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    name_max: int = 32
    password_min: int = 6
    password_max: int = 256
    text_max: int = 4000
    cid_max: int = 64
    group_name_max: int = 64
    group_desc_max: int = 256
    history_default: int = 50
    history_max: int = 200
    who_default: int = 100
    who_max: int = 500
    backlog_page: int = 1000
