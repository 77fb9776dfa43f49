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
_TAKE = """
local wait = 0
for i, key in ipairs(KEYS) do
  local budget = tonumber(ARGV[i + 1])
  if budget > 0 and tonumber(redis.call('GET', key) or '0') >= budget then
    wait = math.max(wait, redis.call('PTTL', key), 1)
  end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  if tonumber(ARGV[i + 1]) > 0 and redis.call('INCR', key) == 1 then
    redis.call('PEXPIRE', key, ARGV[1])
  end
end
return 0
"""
_GIVE_BACK = """
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
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

    async def take(self, keys: Sequence[str], budgets: Sequence[int], window: float
                   ) -> float:
        wait = await self._relay.run_script(_TAKE, keys, [int(window * 1000), *budgets])
        return int(wait) / 1000

    async def give_back(self, keys: Sequence[str]) -> None:
        await self._relay.run_script(_GIVE_BACK, keys, [])
