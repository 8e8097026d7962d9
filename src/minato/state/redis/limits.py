"""The limits the replicas share in Redis, and what they need besides: a key's token bucket and quota,
session-to-backend affinity, and whether Redis answers.

``minato:rate:<fingerprint>`` (hash ``tokens``, ``at``; expires a minute after its last use, when it is
    full again), ``minato:quota:<fingerprint>`` (hash minute → tokens; expires after the 24 h window)
    A key's token bucket and its generated tokens, read and written by one Lua script each
    (``lua/token_bucket.lua``, ``quota_check.lua``, ``quota_charge.lua``): the arithmetic of
    :mod:`minato.state.windows`, step for step, on Redis's own clock (``TIME``), so the replicas' clocks
    do not matter.
``minato:affinity:<key>`` (string: a backend's name, expires ``MINATO_SESSION_TTL`` after it was set)
    The backend a conversation last used.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Final, cast

from minato.errors import StateUnavailableError
from minato.state.redis.link import PREFIX
from minato.state.windows import BUCKET_SECONDS, WINDOW_MINUTES, Bucket, Standing, bucket

if TYPE_CHECKING:
    from minato.auth.caller import Caller
    from minato.settings import Settings
    from minato.state.redis.link import Link

#: Seconds between the pings that keep ``minato_redis_up`` current when nothing else talks to Redis.
HEALTH_INTERVAL_SECONDS: Final = 5.0
#: A rate-limit bucket untouched for a minute is full again: forgetting it then changes nothing.
RATE_BUCKET_TTL_MS: Final = 61_000


class RedisRateLimiter:
    """A token bucket per key (:func:`~minato.state.windows.take_one`) in Redis, for every replica."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._bucket = link.script("clock", "token_bucket")

    async def check(self, key: str, per_minute: int) -> Bucket:
        """Take one request from ``key``'s bucket: where it stands then."""
        return await self._run(key, per_minute, [])

    async def peek(self, key: str, per_minute: int) -> Bucket:
        """Where ``key``'s bucket stands, nothing taken (nor written)."""
        return await self._run(key, per_minute, ["", "1"])

    async def _run(self, key: str, per_minute: int, more: list[str]) -> Bucket:
        args: list[str | int] = [per_minute, RATE_BUCKET_TTL_MS, *more]
        wait, tokens = await self._link.run(self._bucket(keys=[f"{PREFIX}rate:{key}"], args=args))
        return bucket(float(tokens), float(wait), per_minute)


class RedisQuota:
    """A key's tokens over a rolling 24 h in minute buckets (:mod:`minato.state.windows`), in Redis."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._check = link.script("clock", "quota_check")
        self._charge = link.script("clock", "quota_charge")

    async def check(self, caller: Caller) -> Standing:
        """Where the key stands against its quota."""
        limit = caller.tokens_per_day
        if not limit:
            return Standing(0.0, 0)
        args = [limit, BUCKET_SECONDS, WINDOW_MINUTES]
        wait, total, resets = await self._link.run(self._check(keys=[f"{PREFIX}quota:{caller.fingerprint}"], args=args))
        return Standing(float(wait), max(0, limit - int(total)), float(resets))

    async def charge(self, caller: Caller, tokens: int) -> None:
        """Count ``tokens`` for a key with a quota (keys without one are not tracked)."""
        if not caller.tokens_per_day or tokens <= 0:
            return
        args = [tokens, BUCKET_SECONDS, WINDOW_MINUTES]
        await self._link.run(self._charge(keys=[f"{PREFIX}quota:{caller.fingerprint}"], args=args))


class RedisAffinity:
    """Which backend a conversation last used, forgotten with the conversation's idle expiry."""

    def __init__(self, link: Link, settings: Settings) -> None:
        self._link = link
        self._ttl_ms = math.ceil(settings.session_ttl * 1000)

    async def get(self, key: str) -> str | None:
        """The backend's name the conversation ``key`` last used, if known."""
        name = cast("bytes | None", await self._link.run(self._link.client.get(f"{PREFIX}affinity:{key}")))
        return None if name is None else name.decode()

    async def put(self, key: str, backend: str) -> None:
        """Remember that conversation ``key`` used ``backend``."""
        await self._link.run(self._link.client.set(f"{PREFIX}affinity:{key}", backend, px=self._ttl_ms))


class RedisHealth:
    """Whether Redis answers; pinged every few seconds so ``minato_redis_up`` is current."""

    name: Final = "redis"

    def __init__(self, link: Link) -> None:
        self._link = link

    async def ping(self) -> str | None:
        """``None`` when Redis answers, else why not."""
        try:
            await self._link.run(self._link.client.ping())
        except StateUnavailableError as exc:
            return exc.detail
        return None

    async def watch(self) -> None:
        """Ping forever (cancelled with the state)."""
        while True:
            await self.ping()
            await asyncio.sleep(HEALTH_INTERVAL_SECONDS)


__all__ = ["RedisAffinity", "RedisHealth", "RedisQuota", "RedisRateLimiter"]
