"""What Minato's guarantees need of the state it keeps: the interfaces, whoever implements them.

Three homes implement them alike:

- :mod:`minato.state.memory`: one process (a single worker): in memory, nothing to fail;
- :mod:`minato.state.sqlite`: the workers of one machine, through the embedded SQLite file;
- :mod:`minato.state.redis`: replicas on several machines, through Redis or Valkey.

Every method fails closed: when its home cannot answer it raises
:class:`~minato.errors.StateUnavailableError` (a 503 with ``Retry-After``), never lets a request past a
limit or runs a turn without its lease.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from minato.state.quota import Quota
    from minato.state.sessions.store import SessionStore


class HeldTurn(Protocol):
    """A conversation's turn, held until :meth:`release` (the one turn at a time a conversation runs)."""

    def release(self) -> None:
        """Give the turn back (idempotent, never blocks, never raises). A remote release runs on as its
        own task, so the cancellation of the request that held it cannot stop it; if even that fails,
        the lease expires by itself."""


class TurnLocks(Protocol):
    """One turn at a time per conversation ``(owner, session_id)``, across every process sharing it."""

    async def acquire(self, owner: str, session_id: str) -> HeldTurn:
        """Wait until the conversation's previous turn is over, then hold its turn. Cancellable while it
        waits (nothing stays held); raises :class:`~minato.errors.StateUnavailableError`."""
        ...


class RateLimiter(Protocol):
    """A token bucket per key, ``per_minute`` deep, refilled continuously at ``per_minute`` a minute."""

    async def check(self, key: str, per_minute: int) -> float:
        """Take one request from ``key``'s bucket: return 0, or the seconds until one is there (nothing
        taken). Raises :class:`~minato.errors.StateUnavailableError`."""
        ...


class Affinity(Protocol):
    """Which backend a conversation last used, so its next turn goes there (its model is warm)."""

    async def get(self, key: str) -> str | None:
        """The backend's name (``host:port``) the conversation ``key`` last used, if known."""
        ...

    async def put(self, key: str, backend: str) -> None:
        """Remember that conversation ``key`` used ``backend`` (forgotten with the conversation's expiry)."""
        ...


class StateHealth(Protocol):
    """Whether the shared state answers, for ``/ready`` and ``minato_redis_up``."""

    @property
    def name(self) -> str:
        """What the state is kept in (``memory``, ``sqlite``, ``redis``)."""
        ...

    async def ping(self) -> str | None:
        """``None`` when the state answers, else why not (Minato's words, never the library's)."""
        ...


class SharedState(NamedTuple):
    """The state one runtime uses, all from one home (see :func:`minato.state.open_state`)."""

    store: SessionStore
    turns: TurnLocks
    limiter: RateLimiter
    quota: Quota
    affinity: Affinity
    health: StateHealth


__all__ = ["Affinity", "HeldTurn", "RateLimiter", "SharedState", "StateHealth", "TurnLocks"]
