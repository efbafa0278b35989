"""`SpendLedger` shared by every broker replica through Redis.

Each counter is a sorted set (member: reservation id, score: when it was reserved) and a hash
(reservation id -> ``"<units>|<lease until>"``, lease ``0`` once committed). One Lua script prunes,
sums each charge's window, and adds the reservation to every counter only when all charges fit;
Redis runs a script atomically, so calls racing on any number of replicas for the last part of a
budget never overspend. Commit and release are one script each. Keys expire `retention_seconds`
after their last reservation.

Units are whole numbers of 10^-6 (broker/policy/limits.py) summed as Lua numbers (doubles): exact
while a window holds less than 2^53 units (about 9 billion whole units of the amount); larger
ceilings are refused with ValueError when reserving. Timestamps are the replicas' wall clocks.
When Redis cannot be reached the ledger raises StoreUnavailable and the gateway fails closed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from broker.approvals.ports import StoreUnavailable
from broker.approvals.spending import DEFAULT_LEASE_SECONDS, Charge, Reservation, SpendRefusal, check_charges
from broker.store.spend import DEFAULT_RETENTION_SECONDS

logger = logging.getLogger(__name__)

KEY_PREFIX = "broker:spend:"
EXACT_LIMIT = 2**53

# KEYS: zset, hash for each distinct counter. ARGV: now, lease until, prune horizon, reservation id,
# retention ms, then per charge: counter number (1-based), units, ceiling, since.
# Returns {1} when reserved, {0, charge number, spent, oldest} when refused (numbers as strings).
_RESERVE = """
local now = tonumber(ARGV[1])
local rid = ARGV[4]
local totals = {}
for i = 1, #KEYS, 2 do
  local old = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[3])
  for _, member in ipairs(old) do redis.call('HDEL', KEYS[i + 1], member) end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[3]) end
end
local charge = 0
local first_units = {}
for a = 6, #ARGV, 4 do
  charge = charge + 1
  local k = tonumber(ARGV[a]) * 2 - 1
  local units, ceiling, since = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 3]
  if first_units[k] == nil then first_units[k] = ARGV[a + 1] end
  local tag = k .. '@' .. since
  local spent, oldest = 0, nil
  if totals[tag] then
    spent, oldest = totals[tag][1], totals[tag][2]
  else
    local found = redis.call('ZRANGEBYSCORE', KEYS[k], since, '+inf', 'WITHSCORES')
    for j = 1, #found, 2 do
      local entry = redis.call('HGET', KEYS[k + 1], found[j])
      if entry then
        local bar = string.find(entry, '|', 1, true)
        local lease = tonumber(string.sub(entry, bar + 1))
        if lease == 0 or lease > now then
          spent = spent + tonumber(string.sub(entry, 1, bar - 1))
          local at = tonumber(found[j + 1])
          if oldest == nil or at < oldest then oldest = at end
        end
      end
    end
    totals[tag] = {spent, oldest}
  end
  if spent + units > ceiling then
    return {0, tostring(charge), string.format('%.0f', spent), oldest and string.format('%.6f', oldest) or ''}
  end
end
for k, units in pairs(first_units) do
  redis.call('ZADD', KEYS[k], ARGV[1], rid)
  redis.call('HSET', KEYS[k + 1], rid, units .. '|' .. ARGV[2])
  redis.call('PEXPIRE', KEYS[k], ARGV[5])
  redis.call('PEXPIRE', KEYS[k + 1], ARGV[5])
end
return {1}
"""

# KEYS as above; ARGV: reservation id, when it was reserved, retention ms, then units per counter.
_COMMIT = """
for i = 1, #KEYS, 2 do
  redis.call('ZADD', KEYS[i], ARGV[2], ARGV[1])
  redis.call('HSET', KEYS[i + 1], ARGV[1], ARGV[3 + (i + 1) / 2] .. '|0')
  redis.call('PEXPIRE', KEYS[i], ARGV[3])
  redis.call('PEXPIRE', KEYS[i + 1], ARGV[3])
end
return 1
"""

_RELEASE = """
for i = 1, #KEYS, 2 do
  redis.call('ZREM', KEYS[i], ARGV[1])
  redis.call('HDEL', KEYS[i + 1], ARGV[1])
end
return 1
"""


class RedisSpendLedger:
    """A SpendLedger on Redis; use as ``async with`` (it owns the client and its connections)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 2.0,
        prefix: str = KEY_PREFIX,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
    ) -> None:
        if timeout <= 0 or lease_seconds <= 0 or retention_seconds <= 0:
            raise ValueError("timeout, lease_seconds and retention_seconds must be positive")
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"not a Redis URL: {url!r} (redis://host:6379/0, rediss://..., unix://...)")
        self._url = url
        self._timeout = timeout
        self._prefix = prefix
        self._lease = lease_seconds
        self._retention = retention_seconds
        self._redis: Redis | None = None
        self._scripts: tuple[AsyncScript, AsyncScript, AsyncScript] | None = None

    async def __aenter__(self) -> Self:
        self._redis = Redis.from_url(
            self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout
        )
        self._scripts = (
            self._redis.register_script(_RESERVE),
            self._redis.register_script(_COMMIT),
            self._redis.register_script(_RELEASE),
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._redis is not None:
            client, self._redis, self._scripts = self._redis, None, None
            await client.aclose()

    async def reserve(
        self, reservation_id: str, charges: Sequence[Charge], now: float
    ) -> Reservation | SpendRefusal:
        check_charges(charges)
        for charge in charges:
            if charge.ceiling + charge.units >= EXACT_LIMIT:
                raise ValueError(f"a limit of {charge.ceiling} units is too large to count exactly on Redis")
        counters = list(dict.fromkeys(charge.counter for charge in charges))
        args: list[Any] = [
            repr(now),
            repr(now + self._lease),
            repr(now - self._retention),
            reservation_id,
            int(self._retention * 1000),
        ]
        for charge in charges:
            args += [counters.index(charge.counter) + 1, charge.units, charge.ceiling, repr(charge.since)]
        answer = await self._run(0, self._keys(counters), args, "reserve spend")
        if int(answer[0]) == 1:
            return Reservation(reservation_id, tuple(charges), now)
        oldest = answer[3].decode() if isinstance(answer[3], bytes) else str(answer[3])
        return SpendRefusal(charges[int(answer[1]) - 1], int(answer[2]), float(oldest) if oldest else None)

    async def commit(self, reservation: Reservation) -> None:
        units = {charge.counter: charge.units for charge in reversed(reservation.charges)}
        counters = list(dict.fromkeys(charge.counter for charge in reservation.charges))
        args = [
            reservation.id,
            repr(reservation.at),
            int(self._retention * 1000),
            *(units[c] for c in counters),
        ]
        await self._run(1, self._keys(counters), args, "commit spend")

    async def release(self, reservation: Reservation) -> None:
        counters = list(dict.fromkeys(charge.counter for charge in reservation.charges))
        await self._run(2, self._keys(counters), [reservation.id], "release spend")

    def _keys(self, counters: list[str]) -> list[str]:
        return [
            key for counter in counters for key in (f"{self._prefix}{counter}", f"{self._prefix}{counter}:e")
        ]

    async def _run(self, which: int, keys: list[str], args: list[Any], operation: str) -> Any:
        if self._scripts is None:
            raise RuntimeError("RedisSpendLedger is used outside its 'async with' block")
        try:
            return await self._scripts[which](keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(
                f"cannot {operation}: the spend ledger (Redis) is unreachable: {exc}"
            ) from exc
