"""Login throttling (R6): budgets of failed logins per account and per client address.

The budgets are checked before a password is hashed, so a guessing flood costs
the server a counter read per guess, not a 16 MiB scrypt. Counts live in fixed
windows (the first failure opens one for ``window`` seconds): in memory on one
node, in Redis across a cluster (``relay.counters.RedisCounters``), so that guesses
spread over several nodes share one budget.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from qqchat.errors import ChatError


class Counters(Protocol):
    async def peek(self, keys: Sequence[str]) -> list[tuple[int, float]]:
        """Each key's count in its current window, and the seconds the window has left."""
        ...

    async def take(self, keys: Sequence[str], budgets: Sequence[int], window: float
                   ) -> float:
        """At once: if a key has spent its budget (0: none), count nothing and return
        the seconds until it is free again; else count one on each key with a budget
        (a key's first count opens its window) and return 0."""
        ...

    async def give_back(self, keys: Sequence[str]) -> None:
        """Take back one count of ``take`` from each key."""
        ...


class LocalCounters:
    """``Counters`` in this process, in bounded memory: past ``max_keys`` the lapsed
    windows are dropped, and if that is not enough, all of them (erring on the side
    of letting logins through rather than growing)."""

    def __init__(self, clock: IReactorTime, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max = max_keys
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (count, window end)

    def _current(self, key: str, now: float) -> tuple[int, float]:
        count, end = self._counts.get(key, (0, now))
        return (count, end) if end > now else (0, now)

    async def peek(self, keys: Sequence[str]) -> list[tuple[int, float]]:
        now = self._clock.seconds()
        return [(count, end - now) for count, end in (self._current(k, now) for k in keys)]

    async def take(self, keys: Sequence[str], budgets: Sequence[int], window: float
                   ) -> float:
        now = self._clock.seconds()
        current = [self._current(k, now) for k in keys]
        wait = max((end - now for (count, end), budget in zip(current, budgets, strict=True)
                    if budget and count >= budget), default=0.0)
        if wait > 0:
            return wait
        for key, (count, end), budget in zip(keys, current, budgets, strict=True):
            if not budget:
                continue
            if count == 0:
                end = now + window
                if len(self._counts) >= self._max:
                    self._prune(now)
            self._counts[key] = (count + 1, end)
        return 0.0

    async def give_back(self, keys: Sequence[str]) -> None:
        now = self._clock.seconds()
        for key in keys:
            count, end = self._current(key, now)
            if count > 0:
                self._counts[key] = (count - 1, end)

    def _prune(self, now: float) -> None:
        self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
        if len(self._counts) >= self._max:
            self._counts.clear()


class LoginThrottle:
    """The two budgets of R6, spent in a way that concurrency cannot outrun.

    Each password check first reserves one failure on both budgets (``begin``), and
    only a right password gives it back (``succeeded``): were failures counted after
    their hash, a burst of guesses sent at once would all pass the check and all be
    hashed. The address budget is also read on its own before the account is looked
    up (``check_address``), so a spent address costs one counter read, not a query.
    Refusals are answered after ``pause`` seconds: a flooding connection then asks
    about once a second, and a flood of them costs the server little.
    """

    def __init__(self, counters: Counters, per_account: int, per_address: int,
                 window: float = 60.0, pause: float = 1.0) -> None:
        self._counters = counters
        self._budgets = (per_account, per_address)
        self._window = window
        self.pause = pause

    @staticmethod
    def _address_key(address: str) -> str:
        return f"login-fail:address:{address}"

    @classmethod
    def _keys(cls, account: str, address: str) -> list[str]:
        return [f"login-fail:account:{account}", cls._address_key(address)]

    @staticmethod
    def _refused(wait: float) -> ChatError:
        return ChatError("rate_limited", "too many failed logins; try again later",
                         retry_after=round(wait + 0.5))

    async def check_address(self, address: str) -> None:
        """Raise ``rate_limited`` if the address has spent its budget."""
        budget = self._budgets[1]
        if not budget:
            return
        [(count, left)] = await self._counters.peek([self._address_key(address)])
        if count >= budget and left > 0:
            raise self._refused(left)

    async def begin(self, account: str, address: str) -> None:
        """Reserve one failure on both budgets, or raise ``rate_limited``."""
        if not any(self._budgets):
            return
        wait = await self._counters.take(self._keys(account, address), self._budgets,
                                         self._window)
        if wait > 0:
            raise self._refused(wait)

    async def succeeded(self, account: str, address: str) -> None:
        """The password was right: it was no failure."""
        if any(self._budgets):
            await self._counters.give_back(
                [k for k, b in zip(self._keys(account, address), self._budgets, strict=True)
                 if b])


class HashTurns:
    """Turns at the password-hashing threads, shared fairly between client addresses.

    At most ``width`` hashes are handed to the threads at once (a few more than
    there are threads, so that a thread never waits for the reactor between two);
    the rest wait here, one line per address, and each freed turn goes to the first
    address in line that has no hash running (else to the first in line). A burst
    of guesses from one address then delays a login from another by about one
    hash per thread, while one address alone (a NAT, say) still gets every thread.
    Taking a budget's reservation once a turn is given, not before, keeps one
    address's reservations in flight to ``width``.
    """

    def __init__(self, width: int) -> None:
        self._width = width
        self._running: dict[str, int] = {}  # address -> its hashes running
        self._lines: dict[str, deque[defer.Deferred[None]]] = {}  # in arrival order
        #: turns given and not yet passed to their waiters, and whether a loop is
        #: passing them: a waiter refused at once hands its turn straight on, and a
        #: line of hundreds of those must not nest that many calls deep
        self._given: deque[defer.Deferred[None]] = deque()
        self._giving = False

    async def turn(self, address: str) -> None:
        """Wait for a turn; pair with ``done(address)``."""
        if sum(self._running.values()) < self._width and not self._lines:
            self._running[address] = self._running.get(address, 0) + 1
            return
        d: defer.Deferred[None] = defer.Deferred()
        self._lines.setdefault(address, deque()).append(d)
        await d

    def done(self, address: str) -> None:
        left = self._running[address] - 1
        if left:
            self._running[address] = left
        else:
            del self._running[address]
        if not self._lines:
            return
        nxt = next((a for a in self._lines if a not in self._running), None)
        if nxt is None:
            nxt = next(iter(self._lines))
        line = self._lines.pop(nxt)
        self._given.append(line.popleft())
        if line:
            self._lines[nxt] = line  # to the back of the line
        self._running[nxt] = self._running.get(nxt, 0) + 1
        if self._giving:
            return  # the loop below, further up this call stack, passes it on
        self._giving = True
        try:
            while self._given:
                self._given.popleft().callback(None)
        finally:
            self._giving = False
