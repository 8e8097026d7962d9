"""The shared state in Redis (or Valkey): what lets several Minato replicas keep one set of guarantees."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from minato.state.protocols import SharedState
from minato.state.redis.conversations import RedisStore
from minato.state.redis.limits import RedisAffinity, RedisHealth, RedisQuota, RedisRateLimiter
from minato.state.redis.link import Link, connect
from minato.state.redis.places import redis_places
from minato.state.redis.turns import redis_turns
from minato.state.redis.usage import RedisUsage
from minato.state.usage import WriteBehind
from minato.tasks import cancel_and_wait

if TYPE_CHECKING:
    from minato.observability.metrics import Metrics
    from minato.settings import Settings


@contextlib.asynccontextmanager
async def open_redis_state(settings: Settings, metrics: Metrics) -> AsyncIterator[SharedState]:
    """The shared state in Redis at ``settings.redis_url``, for as long as the context lasts.

    Redis need not answer at start-up: until it does, every request that needs it is a 503 and ``/ready``
    says why.
    """
    client = connect(settings)
    link = Link(client, settings, metrics)
    turns = redis_turns(link, settings)
    places = redis_places(link, settings)
    health = RedisHealth(link)
    usage = WriteBehind(RedisUsage(link), failed=metrics.usage_unwritten.inc)
    watching = asyncio.get_running_loop().create_task(health.watch(), name="minato-redis-health")
    try:
        yield SharedState(
            store=RedisStore(link, settings),
            turns=turns,
            limiter=RedisRateLimiter(link),
            quota=RedisQuota(link),
            affinity=RedisAffinity(link, settings),
            health=health,
            concurrency=places,
            usage=usage,
        )
    finally:
        await usage.close()
        await cancel_and_wait(watching)
        await turns.close()
        await places.close()
        await client.aclose()


__all__ = ["open_redis_state"]
