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
    #: members in one group; joins past it get ``group_full``
    group_members_max: int = 500
    #: friends per user; the accept that would pass it gets ``too_many_friends``
    friends_max: int = 1000
    #: groups a user may have created, and belong to (0: no cap); past them
    #: ``too_many_groups_created`` and ``too_many_groups``
    groups_created_max: int = 50
    groups_joined_max: int = 500
    #: pages: friends and groups in the login reply and by default in ``friends`` and
    #: ``groups``; the members each of those groups lists; ``group_info`` members
    friends_page: int = 200
    friends_page_max: int = 1000
    groups_page: int = 50
    groups_page_max: int = 200
    members_preview: int = 20
    members_page: int = 100
    members_page_max: int = 500
    #: messages (chat, group chat, broadcast) a second per user, and how many at
    #: once; 0 is no limit. Unlike the per-connection limit, reconnecting does not
    #: reset it.
    send_rate: float = 50.0
    send_burst: int = 200
    #: searches (users and groups) a second per user, and how many at once; 0 is no limit
    search_rate: float = 5.0
    search_burst: int = 20
    search_default: int = 20
    search_max: int = 50
    #: longest search query, in characters
    query_max: int = 64
    conversations_default: int = 20
    conversations_max: int = 100
    #: failed logins a minute (``login_window`` seconds) per account and per client
    #: address; past either, logins are refused before hashing. 0 is no limit
    login_failures_account: int = 5
    login_failures_address: int = 30
    login_window: float = 60.0
    #: registrations a minute per client address, and how many at once; 0 is no limit
    register_rate: float = 10.0
    register_burst: int = 20
