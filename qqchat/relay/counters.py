"""Login-throttle counters in Redis (``services.throttle.Counters``), so that every
node of a cluster counts against one budget: each key a counter that expires with
its window."""

from __future__ import annotations

from collections.abc import Sequence

from qqchat.relay.redis import RedisRelay

_PEEK = """
local out = {}
for i, key in ipairs(KEYS) do
  out[2 * i - 1] = tonumber(redis.call('GET', key) or '0')
  out[2 * i] = redis.call('PTTL', key)
end
return out
"""
_HIT = """
for _, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then redis.call('PEXPIRE', key, ARGV[1]) end
end
return 1
"""


class RedisCounters:
    def __init__(self, relay: RedisRelay) -> None:
        self._relay = relay

    async def peek(self, keys: Sequence[str]) -> list[tuple[int, float]]:
        got = await self._relay.run_script(_PEEK, keys, [])
        return [(int(got[2 * i]), max(int(got[2 * i + 1]), 0) / 1000)
                for i in range(len(keys))]

    async def hit(self, keys: Sequence[str], window: float) -> None:
        await self._relay.run_script(_HIT, keys, [int(window * 1000)])
