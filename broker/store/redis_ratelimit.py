"""Rate limits shared by every broker replica through Redis.

The same exact sliding log as the in-memory `SlidingWindowLimiter`, kept as a sorted set per
key (score = call time). One Lua script prunes, counts and adds; Redis runs a script
atomically, so replicas hitting one key at the same moment cannot both take the last slot.
Keys expire one window after their last counted call.

Timestamps are the replicas' wall clocks (keep them NTP-synchronized). When Redis cannot be
reached the limiter fails closed: a rate-limited tool is refused until Redis is back.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from broker.policy.decision import RateLimit
from broker.proxy.ratelimit import RateVerdict

logger = logging.getLogger(__name__)

KEY_PREFIX = "broker:ratelimit:"

# KEYS[1]: the key; ARGV: now, window (s), max calls, a member name unique to this call.
# Returns {1, "0"} when counted, {0, seconds until a slot frees} when refused. Lua numbers
# would come back truncated to integers, so the wait travels as a string.
_SLIDING_LOG = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local max_calls = tonumber(ARGV[3])
local horizon = now - window
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', horizon)
local count = redis.call('ZCARD', KEYS[1])
if count < max_calls then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
  return {1, '0'}
end
local oldest = redis.call('ZRANGE', KEYS[1], count - max_calls, count - max_calls, 'WITHSCORES')
return {0, string.format('%.6f', tonumber(oldest[2]) - horizon)}
"""


class RedisRateLimiter:
    """A RateLimiter on Redis; use as ``async with`` (it owns the client and its connections)."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = 2.0,
        prefix: str = KEY_PREFIX,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"not a Redis URL: {url!r} (redis://host:6379/0, rediss://..., unix://...)")
        self._url = url
        self._clock = clock
        self._timeout = timeout
        self._prefix = prefix
        self._redis: Redis | None = None
        self._script: AsyncScript | None = None
        self._failing = False

    async def __aenter__(self) -> Self:
        self._redis = Redis.from_url(
            self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout
        )
        self._script = self._redis.register_script(_SLIDING_LOG)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._redis is not None:
            client, self._redis, self._script = self._redis, None, None
            await client.aclose()

    async def hit(self, key: str, limit: RateLimit) -> RateVerdict:
        if self._script is None:
            raise RuntimeError("RedisRateLimiter is used outside its 'async with' block")
        now = self._clock()
        try:
            counted, wait = await self._script(
                keys=[self._prefix + key],
                args=[repr(now), repr(float(limit.window_seconds)), limit.max_calls, os.urandom(8).hex()],
            )
        except (RedisError, OSError) as exc:
            if not self._failing:
                logger.error("shared rate limits (Redis) unreachable; refusing rate-limited calls: %s", exc)
                self._failing = True
            return RateVerdict.uncounted("the shared rate-limit counters (Redis) are unreachable")
        if self._failing:
            logger.warning("shared rate limits (Redis) reachable again")
            self._failing = False
        if int(counted) == 1:
            return RateVerdict(True)
        return RateVerdict(False, max(math.ceil(float(wait) * 1000) / 1000, 0.001))
