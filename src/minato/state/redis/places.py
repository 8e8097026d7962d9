"""A key's places across replicas: a sorted set per key in Redis.

``minato:places:<key>`` (sorted set: member = a holder's random token, score = when its place expires on
    Redis's own clock, ``TIME``; the set expires ``MINATO_TURN_LEASE`` after its last place was taken or
    renewed, so an idle key leaves nothing behind)
    One member per generation a bounded key runs. ``lua/place_take.lua`` drops the expired members and
    adds one when fewer than the bound are left; ``place_renew.lua`` pushes a member's expiry a lease ahead
    if it is still there; ``place_count.lua`` counts the live ones; giving a place back is ``ZREM``. A
    replica that died leaves places that expire by themselves.

The orchestration (this process's own queue first, polling, renewal, giving back) is
:class:`~minato.state.places.SharedKeyConcurrency`'; this module is the calls it makes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from minato.state.places import KeyBound, SharedKeyConcurrency
from minato.state.redis.link import PREFIX

if TYPE_CHECKING:
    from minato.settings import Settings
    from minato.state.redis.link import Link


class RedisPlaceStore:
    """The places in Redis, a sorted set per key, each member expiring on Redis's clock."""

    def __init__(self, link: Link, lease: float) -> None:
        self._link = link
        self._lease_ms = math.ceil(lease * 1000)
        self._take = link.script("clock", "place_take")
        self._renew = link.script("clock", "place_renew")
        self._count = link.script("clock", "place_count")

    async def take(self, key: KeyBound, token: str) -> bool:
        """Add ``token`` if fewer than ``key.limit`` places are live, or it holds one already."""
        taken = await self._link.run(self._take(keys=[_key(key.key)], args=[token, key.limit, self._lease_ms]))
        return bool(taken)

    async def extend(self, key: KeyBound, token: str) -> bool:
        """Push ``token``'s expiry a lease ahead, if it is still a member."""
        held = await self._link.run(self._renew(keys=[_key(key.key)], args=[token, self._lease_ms]))
        return bool(held)

    async def delete(self, key: KeyBound, token: str) -> None:
        """``ZREM`` ``token`` (never another's place)."""
        await self._link.run(self._link.client.zrem(_key(key.key), token))

    async def running(self, key: str) -> int:
        """How many of ``key``'s places are live."""
        return int(await self._link.run(self._count(keys=[_key(key)])))


def _key(key: str) -> str:
    return f"{PREFIX}places:{key}"


def redis_places(link: Link, settings: Settings) -> SharedKeyConcurrency:
    """A bound per key on the generations it runs at once, across the replicas sharing Redis."""
    # Closing waits for the places being given back no longer than one call to Redis may take.
    store = RedisPlaceStore(link, settings.turn_lease)
    return SharedKeyConcurrency(store, settings.turn_lease, closing=settings.redis_timeout)


__all__ = ["RedisPlaceStore", "redis_places"]
