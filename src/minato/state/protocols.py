"""What Minato's guarantees need of the state it keeps: the interfaces, whoever implements them.

Three homes implement them alike:

- :mod:`minato.state.memory`: one process (a single worker): in memory, nothing to fail;
- :mod:`minato.state.sqlite`: the workers of one machine, through the embedded SQLite file;
- :mod:`minato.state.redis`: replicas on several machines, through Redis or Valkey.

What they share is written once: the lease orchestration (:mod:`minato.state.leases`) and the
arithmetic of the limits (:mod:`minato.state.windows`).

Every method fails closed: when its home cannot answer it raises
:class:`~minato.errors.StateUnavailableError` (a 503 with ``Retry-After``), never lets a request past a
limit or runs a turn without its lease.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from minato.auth.caller import Caller
    from minato.state.conversations import Bounds, Caps, Session, SessionSummary, StoredMessage
    from minato.state.windows import Bucket, Standing


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

    async def check(self, key: str, per_minute: int) -> Bucket:
        """Take one request from ``key``'s bucket: where it stands then (``wait`` 0, or the seconds until
        one is there, nothing taken). Raises :class:`~minato.errors.StateUnavailableError`."""
        ...

    async def peek(self, key: str, per_minute: int) -> Bucket:
        """Where ``key``'s bucket stands, nothing taken. Raises :class:`~minato.errors.StateUnavailableError`."""
        ...


class Quota(Protocol):
    """A token quota per key over a rolling 24 h (:mod:`minato.state.windows`): what the guard checks
    before a request and what a finished request is charged."""

    async def check(self, caller: Caller) -> Standing:
        """Where ``caller`` stands. Raises :class:`~minato.errors.StateUnavailableError` when its home
        cannot answer."""
        ...

    async def charge(self, caller: Caller, tokens: int) -> None:
        """Count ``tokens`` generated for ``caller`` now."""
        ...


class KeyConcurrency(Protocol):
    """A bound per key on the generations it runs at once, across every process sharing the home."""

    async def acquire(self, key: str, limit: int) -> HeldTurn:
        """Wait until ``key`` runs fewer than ``limit`` generations (its requests in this process in
        arrival order), then hold one place until released. Cancellable while it waits (nothing stays
        held); raises :class:`~minato.errors.StateUnavailableError`."""
        ...

    async def running(self, key: str) -> int:
        """How many places ``key`` holds now, across the processes sharing the home."""
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


class SessionStore(Protocol):
    """Persistence of conversations. Every method is safe to call from the event loop.

    Conversations are addressed by ``(owner, session_id)``; ``owner`` is a key fingerprint, or
    ``""`` for keyless deployments.
    """

    async def open(self) -> None:
        """Prepare the store (create files, schema, migrate; report damage)."""

    async def close(self) -> None:
        """Release the store's resources."""

    async def get(self, owner: str, session_id: str) -> Session | None:
        """Return a conversation, or ``None``; raise :class:`SessionDamagedError` if it cannot be read."""

    async def owners_of(self, session_id: str) -> list[str]:
        """Return the owners having a conversation with this id, sorted."""

    async def append(
        self, owner: str, session_id: str, messages: list[StoredMessage], bounds: Bounds, *, caps: Caps, now: float
    ) -> None:
        """Add messages to a conversation (creating it), trim it to its bounds, and keep the store
        within ``caps``."""

    async def set_system_prompt(
        self, owner: str, session_id: str, prompt: str | None, *, caps: Caps, now: float
    ) -> None:
        """Set or (with ``None``) remove a conversation's system prompt, creating it if needed, and
        keep the store within ``caps``."""

    async def delete(self, owner: str, session_id: str) -> None:
        """Forget a conversation (idempotent); succeeds even if its messages are damaged."""

    async def list(self, owner: str | None, offset: int, limit: int) -> tuple[list[SessionSummary], int]:
        """Return a page of one owner's conversations (``None``: every owner's), most recently
        active first, and their total count."""

    async def expire(self, idle_before: float, caps: Caps) -> int:
        """Drop conversations idle since before ``idle_before``, then those beyond ``caps`` (every
        owner's, then the store's); return how many were dropped."""

    async def enforce_image_budget(self, budget: int) -> int:
        """Drop the oldest images of the whole store (their text stays) until at most ``budget``
        bytes are kept; return how many messages lost their images."""


class SharedState(NamedTuple):
    """The state one runtime uses, all from one home (see :func:`minato.state.open_state`)."""

    store: SessionStore
    turns: TurnLocks
    limiter: RateLimiter
    quota: Quota
    affinity: Affinity
    health: StateHealth
    concurrency: KeyConcurrency


__all__ = [
    "Affinity",
    "HeldTurn",
    "KeyConcurrency",
    "Quota",
    "RateLimiter",
    "SessionStore",
    "SharedState",
    "StateHealth",
    "TurnLocks",
]
