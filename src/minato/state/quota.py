"""Token quotas: the tokens a key's generations produced (Ollama's ``eval_count``) over a rolling 24 h.

The guard asks :meth:`Quota.check` before every request of a key with a quota; the request log
middleware charges what a finished request generated, from its record, so every answer is charged
once whichever route produced it. Tokens are counted as they are relayed, so an answer the client
leaves, or that Ollama breaks off, is charged what it relayed (Ollama's own count replaces that
count when the answer completes).

A check and a charge are apart, so the overshoot is bounded instead: each answer is capped at what
the quota had left when it began (Ollama's ``num_predict``, whatever the door calls it). One answer
never passes the quota; ``N`` answers running at once each see the same remainder ``R``, so together
they pass it by at most ``(N - 1) * R``, and the next request is refused.

Every home of the state (:mod:`minato.state`) keeps a key's tokens the same way: one bucket per
minute, counted for :data:`WINDOW_MINUTES` after its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol

if TYPE_CHECKING:
    from minato.auth.caller import Caller

BUCKET_SECONDS: Final = 60
#: Minutes a bucket counts after its own: whole minutes, so tokens count for 24 h and at most a minute more.
WINDOW_MINUTES: Final = 24 * 60


class Standing(NamedTuple):
    """Where a key stands against its quota."""

    wait: float
    """0 while it may go on, else the seconds until enough of its tokens expire."""
    left: int
    """Tokens it may still generate in the window (0 once over; the quota itself for a key not seen yet)."""


class Quota(Protocol):
    """What the guard and the request log need of a token quota, whichever home keeps it."""

    async def check(self, caller: Caller) -> Standing:
        """Where ``caller`` stands. Raises :class:`~minato.errors.StateUnavailableError` when its home
        cannot answer."""
        ...

    async def charge(self, caller: Caller, tokens: int) -> None:
        """Count ``tokens`` generated for ``caller`` now."""
        ...


def standing(buckets: Sequence[Sequence[int]], total: int, limit: int, now: float) -> Standing:
    """Where a key with ``limit`` stands, given its live ``(minute, tokens)`` buckets and their ``total``."""
    return Standing(seconds_until_under(buckets, total, limit, now), max(0, limit - total))


def seconds_until_under(buckets: Sequence[Sequence[int]], total: int, limit: int, now: float) -> float:
    """Given a key's live ``(minute, tokens)`` buckets, oldest first, and their ``total``: 0 while it is
    under ``limit``, else the seconds until the expiry of its oldest buckets brings it under."""
    if total < limit:
        return 0.0
    freed = accumulate(tokens for _, tokens in buckets)
    index = next(i for i, tokens in enumerate(freed) if total - tokens < limit)
    return (buckets[index][0] + WINDOW_MINUTES + 1) * BUCKET_SECONDS - now


__all__ = ["BUCKET_SECONDS", "WINDOW_MINUTES", "Quota", "Standing", "seconds_until_under", "standing"]
