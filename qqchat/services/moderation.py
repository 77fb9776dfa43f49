"""Ending the sessions of accounts an operator disabled (R10).

``qqchat-admin disable`` only writes the database, which every node shares, so
each node looks there every few seconds for accounts disabled since its last
look and ends their sessions on this node. No other channel is needed: it works
the same on one node and in a cluster, with or without Redis.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from qqchat.relay.hub import SessionHub
from qqchat.services.presence import PresenceService
from qqchat.storage.accounts import AccountStore

#: seconds between two looks; a disabled user's session ends within about this long
SWEEP_EVERY = 5.0
#: how far back each look reaches past the previous one: the admin command's clock
#: and this node's may differ a little
OVERLAP_MS = 60_000


class DisabledAccounts(Service):
    log = Logger()

    def __init__(self, store: AccountStore, hub: SessionHub, presence: PresenceService,
                 clock: IReactorTime, every: float = SWEEP_EVERY) -> None:
        self._store = store
        self._hub = hub
        self._presence = presence
        self._clock = clock
        self._since = int(clock.seconds() * 1000) - OVERLAP_MS
        self._loop = task.LoopingCall(self.sweep)
        self._loop.clock = clock
        self._every = every

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._every, now=False).addErrback(
            lambda f: self.log.failure("disabled-account sweep stopped", f))

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    async def sweep(self) -> int:
        """End the local sessions of accounts disabled since the last look; returns how
        many. A failure (the database away) is logged and tried again next time."""
        now = int(self._clock.seconds() * 1000)
        try:
            disabled = await self._store.disabled_since(self._since)
        except Exception as e:
            self.log.warn("could not look for disabled accounts: {e}", e=e)
            return 0
        self._since = now - OVERLAP_MS
        ended = 0
        for uid in disabled:
            session = self._hub.get(uid)
            if session is None or session.closed:
                continue
            self.log.info("ending the session of disabled account {uid}", uid=uid)
            try:
                await self._presence.went_offline(session)
            except Exception as e:  # Redis away: its presence lapses with this node's key
                self.log.warn("presence of disabled account {uid} not released: {e}",
                              uid=uid, e=e)
            session.kick("account disabled", code="account_disabled")
            ended += 1
        return ended
