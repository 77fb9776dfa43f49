"""Login throttling (R6): budgets of failed logins per account and per client address.

The budgets are checked before a password is hashed, so a guessing flood costs
the server a counter read per guess, not a 16 MiB scrypt. Counts live in fixed
windows (the first failure opens one for ``window`` seconds): in memory on one
node, in Redis across a cluster (``relay.counters.RedisCounters``), so that guesses
spread over several nodes share one budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from twisted.internet.interfaces import IReactorTime

from qqchat.errors import ChatError


class Counters(Protocol):
    async def peek(self, keys: Sequence[str]) -> list[tuple[int, float]]:
        """Each key's count in its current window, and the seconds the window has left."""
        ...

    async def hit(self, keys: Sequence[str], window: float) -> None:
        """Count one event on each key (a key's first count opens its window)."""
        ...


class LocalCounters:
    """``Counters`` in this process, in bounded memory: past ``max_keys`` the lapsed
    windows are dropped, and if that is not enough, all of them (erring on the side
    of letting logins through rather than growing)."""

    def __init__(self, clock: IReactorTime, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max = max_keys
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (count, window end)

    async def peek(self, keys: Sequence[str]) -> list[tuple[int, float]]:
        now = self._clock.seconds()
        out = []
        for key in keys:
            count, end = self._counts.get(key, (0, now))
            out.append((count, end - now) if end > now else (0, 0.0))
        return out

    async def hit(self, keys: Sequence[str], window: float) -> None:
        now = self._clock.seconds()
        for key in keys:
            count, end = self._counts.get(key, (0, now))
            if end <= now:
                count, end = 0, now + window
                if len(self._counts) >= self._max:
                    self._prune(now)
            self._counts[key] = (count + 1, end)

    def _prune(self, now: float) -> None:
        self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
        if len(self._counts) >= self._max:
            self._counts.clear()


class LoginThrottle:
    def __init__(self, counters: Counters, per_account: int, per_address: int,
                 window: float = 60.0) -> None:
        self._counters = counters
        self._budgets = (per_account, per_address)
        self._window = window

    @staticmethod
    def _keys(account: str, address: str) -> list[str]:
        return [f"login-fail:account:{account}", f"login-fail:address:{address}"]

    async def check(self, account: str, address: str) -> None:
        """Raise ``rate_limited`` (with ``retry_after``) if either budget is spent."""
        if not any(self._budgets):
            return
        counts = await self._counters.peek(self._keys(account, address))
        wait = max((left for (count, left), budget in zip(counts, self._budgets, strict=True)
                    if budget and count >= budget), default=0.0)
        if wait > 0:
            raise ChatError("rate_limited", "too many failed logins; try again later",
                            retry_after=round(wait + 0.5))

    async def failed(self, account: str, address: str) -> None:
        if any(self._budgets):
            await self._counters.hit(self._keys(account, address), self._window)
