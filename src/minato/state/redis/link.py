"""The connection to Redis (or Valkey), and the one place its failures become Minato's.

Every member talks to ``MINATO_REDIS_URL`` through one bounded pool of connections whose calls time out
after ``MINATO_REDIS_TIMEOUT``; only a broken connection (one left from before Redis restarted) is tried
again, at once and once, so a dead Redis costs a request next to nothing and a hung one that long. A
conversation's writes and a lease are safe to send twice; a limit or a quota would at worst count one
request twice, failing closed. Every failure to reach Redis becomes
:class:`~minato.errors.StateUnavailableError` in Minato's own words (a 503 with ``Retry-After``: fail
closed). Everything that reads and then writes is one Lua script (``lua/*.lua``), so it is atomic across
replicas. This needs a single Redis (or a primary), not Redis Cluster: a script reaches keys it computes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

import redis.exceptions as redis_errors
import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from minato.errors import StateUnavailableError

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from minato.observability.metrics import Metrics
    from minato.settings import Settings

T = TypeVar("T")
logger = structlog.get_logger("minato.state")

#: Every key Minato keeps is under it, so one Redis can serve other applications too.
PREFIX: Final = "minato:"
#: Connections one process opens at most; a call waits up to ``redis_timeout`` for one, then fails.
MAX_CONNECTIONS: Final = 64

# Failures of Redis itself (unreachable, too slow, not accepting writes now): a 503, not a bug.
_UNAVAILABLE: Final = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.InvalidResponse,
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
    redis_errors.TryAgainError,
    redis_errors.NoPermissionError,
    OSError,
)


def lua(*names: str) -> str:
    """The source of the scripts ``lua/<name>.lua``, one after the other (a prelude first, then the
    script that uses it)."""
    folder = files("minato.state.redis").joinpath("lua")
    return "\n".join(folder.joinpath(f"{name}.lua").read_text(encoding="utf-8") for name in names)


def connect(settings: Settings) -> Redis:
    """A client of ``settings.redis_url`` with Minato's pool, timeouts and retry (it connects lazily)."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=MAX_CONNECTIONS,
        timeout=settings.redis_timeout,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        # One immediate retry on a broken connection (one left from before Redis restarted), none on a
        # timeout: a dead Redis fails the call at once, a hung one after one timeout.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis_errors.ConnectionError,)),
        client_name="minato",
    )
    return Redis.from_pool(pool)


class Link:
    """The client, and the one place its failures become Minato's (and ``minato_redis_up``)."""

    def __init__(self, client: Redis, settings: Settings, metrics: Metrics) -> None:
        self.client = client
        self.metrics = metrics
        self.where = _where(settings.redis_url)
        self.sentence = f"the shared state (Redis at {self.where}) cannot be reached; try again shortly"
        #: The ``lua/`` files of every script registered, each script's in order (for the tests that load them all).
        self.scripts: list[tuple[str, ...]] = []
        self._up: bool | None = None

    async def run(self, call: Awaitable[T]) -> T:
        """Await a call to Redis; an unreachable (or too slow) Redis is :class:`StateUnavailableError`."""
        task = asyncio.current_task()
        cancels = task.cancelling() if task else 0
        try:
            result = await call
        except _UNAVAILABLE as exc:
            _cancelled_meanwhile(task, cancels)
            self._mark(False, exc)
            raise StateUnavailableError(self.sentence) from exc
        _cancelled_meanwhile(task, cancels)
        self._mark(True)
        return result

    def script(self, *names: str) -> AsyncScript:
        """The Lua script made of ``lua/<name>.lua`` files (see :func:`lua`), loaded again by itself into
        a Redis that restarted."""
        self.scripts.append(names)
        return self.client.register_script(lua(*names))

    def _mark(self, up: bool, error: BaseException | None = None) -> None:
        self.metrics.redis_up.set(1 if up else 0)
        if up == self._up:
            return
        self._up = up
        if up:
            logger.info("redis_up", redis=self.where)
        else:
            logger.warning("redis_down", redis=self.where, error=str(error) or type(error).__name__)


def _where(url: str) -> str:
    """Where Redis is, for Minato's sentences: ``host:port`` or a socket path, never credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def _cancelled_meanwhile(task: asyncio.Task[Any] | None, cancels: int) -> None:
    """Raise the cancellation of ``task`` that arrived during a call, if the call lost it.

    redis-py (8.1, on Python 3.11) can lose a cancellation that arrives while it connects: the call then
    returns, or fails as a connection error, and a cancelled task (a turn's lease renewal, the health
    ping) would run on for ever. Upstream reports of cancellations redis-py swallows:
    https://github.com/redis/redis-py/issues/2028 and https://github.com/redis/redis-py/issues/2551 (both
    closed as fixed; the window while a connection is made remains in 8.1).
    """
    if task is not None and task.cancelling() > cancels:
        raise asyncio.CancelledError


__all__ = ["MAX_CONNECTIONS", "PREFIX", "Link", "connect", "lua"]
