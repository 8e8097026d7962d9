"""A conversation's turn across replicas: its lease is a key in Redis.

``minato:turn:<conv>`` (string: a random token, expires ``MINATO_TURN_LEASE``)
    The lease of the conversation's running turn, renewed while it runs. Its expiry is Redis's own.

The orchestration (the process's own lock first, polling, renewal, giving back) is
:class:`~minato.state.leases.Leases`'; this module is the three Lua scripts it runs (``lua/take.lua``,
``renew.lua``, ``unlock.lua``), each checking the token so a holding never touches another's lease.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from minato.state.leases import Leases
from minato.state.redis.conversations import conversation
from minato.state.redis.link import PREFIX

if TYPE_CHECKING:
    from minato.settings import Settings
    from minato.state.redis.link import Link


class RedisLeaseStore:
    """The leases in Redis, each a key holding its holder's token, expiring on Redis's clock."""

    def __init__(self, link: Link, lease: float) -> None:
        self._link = link
        self._lease_ms = math.ceil(lease * 1000)
        self._take = link.script("take")
        self._renew = link.script("renew")
        self._unlock = link.script("unlock")

    async def take(self, key: tuple[str, str], token: str) -> bool:
        """``SET NX PX``, or ``token`` holds it already (a call sent again after its connection broke)."""
        taken = await self._link.run(self._take(keys=[_key(key)], args=[token, self._lease_ms]))
        return bool(taken)

    async def extend(self, key: tuple[str, str], token: str) -> bool:
        """``PEXPIRE`` the lease if it is still ``token``'s."""
        held = await self._link.run(self._renew(keys=[_key(key)], args=[token, self._lease_ms]))
        return bool(held)

    async def delete(self, key: tuple[str, str], token: str) -> None:
        """``DEL`` the lease if it is still ``token``'s."""
        await self._link.run(self._unlock(keys=[_key(key)], args=[token]))


def _key(key: tuple[str, str]) -> str:
    return f"{PREFIX}turn:{conversation(*key)}"


def redis_turns(link: Link, settings: Settings) -> Leases:
    """One turn at a time per conversation across the replicas sharing Redis."""
    # Closing waits for the leases being given back no longer than one call to Redis may take.
    return Leases(RedisLeaseStore(link, settings.turn_lease), settings.turn_lease, closing=settings.redis_timeout)


__all__ = ["RedisLeaseStore", "redis_turns"]
