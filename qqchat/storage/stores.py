"""Every store of the daemon on one pool and engine, built once (``app.build``)."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.enterprise import adbapi
from twisted.internet.interfaces import IReactorTime

from qqchat.storage.accounts import AccountStore
from qqchat.storage.directory import DirectoryStore
from qqchat.storage.engines import Engine
from qqchat.storage.groups import GroupStore
from qqchat.storage.log import LogStore
from qqchat.storage.social import SocialStore
from qqchat.storage.tokens import TokenStore


@dataclass(frozen=True)
class Stores:
    """One store per domain; each service is handed the ones it uses."""

    engine: Engine
    accounts: AccountStore
    social: SocialStore
    groups: GroupStore
    message_log: LogStore
    tokens: TokenStore
    directory: DirectoryStore

    @classmethod
    def open(cls, pool: adbapi.ConnectionPool, engine: Engine,
             clock: IReactorTime | None = None) -> Stores:
        log = LogStore(pool, engine, clock)
        return cls(engine, AccountStore(pool, engine, clock), SocialStore(pool, engine, clock),
                   GroupStore(pool, engine, clock), log, TokenStore(pool, engine, clock),
                   DirectoryStore(pool, engine, clock, derived=log.derive_conversations))
