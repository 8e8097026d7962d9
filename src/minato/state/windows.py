"""The arithmetic of the two limits every home keeps alike: a token bucket per key, and a key's tokens
over a rolling 24 h. Pure functions of a given time, so every home runs the same algorithm on its own
clock (Redis runs the very same steps in Lua, ``redis/lua/token_bucket.lua`` and ``quota_*.lua``, on
Redis's clock; ``tests/e2e/test_redis_lua.py`` checks they answer alike).

Token quotas count the tokens a key's generations produced (Ollama's ``eval_count``). The guard checks
before every request of a key with a quota; a finished request is charged what it generated, so every
answer is charged once whichever route produced it. Tokens are counted as they are relayed, so an
answer the client leaves, or that Ollama breaks off, is charged what it relayed.

A check and a charge are apart, so the overshoot is bounded instead: each answer is capped at what the
quota had left when it began (Ollama's ``num_predict``, whatever the door calls it). One answer never
passes the quota; ``N`` answers running at once each see the same remainder ``R``, so together they
pass it by at most ``(N - 1) * R``, and the next request is refused.

A key's tokens are kept in one bucket per minute, each counted for :data:`WINDOW_MINUTES` after its own.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from itertools import accumulate
from typing import Final, NamedTuple

BUCKET_SECONDS: Final = 60
#: Minutes a bucket counts after its own: whole minutes, so tokens count for 24 h and at most a minute more.
WINDOW_MINUTES: Final = 24 * 60


def take_one(tokens: float, last: float, now: float, per_minute: int) -> tuple[float, float]:
    """Refill a bucket holding ``tokens`` at ``last`` up to ``now`` and take one request from it: return
    what it holds then, and 0 or (nothing taken) the seconds until one request is there.

    The bucket is ``per_minute`` deep and refills continuously at ``per_minute`` a minute; a key not seen
    yet starts full (``tokens = per_minute``, ``last = now``)."""
    tokens = refill(tokens, last, now, per_minute)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, _until_one(tokens, per_minute)


def _until_one(tokens: float, per_minute: int) -> float:
    # The same operations as token_bucket.lua, so Redis answers to the last bit alike.
    return max(0.0, 1.0 - tokens) / (per_minute / 60.0)


class Bucket(NamedTuple):
    """Where a key's token bucket stands after a check (what the rate-limit headers report)."""

    wait: float
    """0 when the request was taken; else the seconds until one is there (nothing taken)."""
    remaining: int
    """Whole requests left in the bucket."""
    reset: float
    """Seconds until the bucket is full again."""


def bucket(tokens: float, wait: float, per_minute: int) -> Bucket:
    """The :class:`Bucket` a key's bucket holding ``tokens`` stands at (``wait`` as :func:`take_one` said)."""
    return Bucket(wait, math.floor(tokens), max(0.0, (per_minute - tokens) / (per_minute / 60.0)))


def refill(tokens: float, last: float, now: float, per_minute: int) -> float:
    """What a bucket holding ``tokens`` at ``last`` holds at ``now`` (nothing taken)."""
    return min(float(per_minute), tokens + max(0.0, now - last) * (per_minute / 60.0))


def peek(tokens: float, last: float, now: float, per_minute: int) -> Bucket:
    """Where a bucket holding ``tokens`` at ``last`` stands at ``now``, nothing taken."""
    tokens = refill(tokens, last, now, per_minute)
    return bucket(tokens, _until_one(tokens, per_minute), per_minute)


class Standing(NamedTuple):
    """Where a key stands against its quota."""

    wait: float
    """0 while it may go on, else the seconds until enough of its tokens expire."""
    left: int
    """Tokens it may still generate in the window (0 once over; the quota itself for a key not seen yet)."""
    resets: float = 0.0
    """Seconds until every token counted now has left the window (0: none counted)."""


def minute_of(now: float) -> int:
    """The bucket that tokens counted at ``now`` go in (``math.floor`` of a division, as Lua computes it:
    Python's ``//`` of floats can round the other way)."""
    return math.floor(now / BUCKET_SECONDS)


def oldest_live(minute: int) -> int:
    """The oldest bucket still counted in ``minute``: older ones have expired."""
    return minute - WINDOW_MINUTES


def standing(buckets: Sequence[Sequence[int]], total: int, limit: int, now: float) -> Standing:
    """Where a key with ``limit`` stands, given its live ``(minute, tokens)`` buckets, oldest first, and
    their ``total``: while under ``limit``, no wait; else the seconds until the expiry of its oldest
    buckets brings it under."""
    resets = expiry(buckets[-1][0], now) if buckets else 0.0
    if total < limit:
        return Standing(0.0, limit - total, resets)
    freed = accumulate(tokens for _, tokens in buckets)
    index = next(i for i, tokens in enumerate(freed) if total - tokens < limit)
    return Standing(expiry(buckets[index][0], now), 0, resets)


def expiry(minute: int, now: float) -> float:
    """Seconds from ``now`` until the tokens of bucket ``minute`` leave the window."""
    return (minute + WINDOW_MINUTES + 1) * BUCKET_SECONDS - now


class QuotaWindow:
    """One key's tokens in memory: ``[minute, tokens]`` buckets, oldest first, and their sum. At most one
    bucket per minute of the window."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()
        self.total = 0

    def _expire(self, minute: int) -> None:
        first = oldest_live(minute)
        while self.buckets and self.buckets[0][0] < first:
            self.total -= self.buckets.popleft()[1]

    def charge(self, now: float, tokens: int) -> None:
        """Count ``tokens`` at ``now``."""
        minute = minute_of(now)
        self._expire(minute)
        if self.buckets and self.buckets[-1][0] == minute:
            self.buckets[-1][1] += tokens
        else:
            self.buckets.append([minute, tokens])
        self.total += tokens

    def standing(self, now: float, limit: int) -> Standing:
        """Where the key stands at ``now`` against ``limit``."""
        self._expire(minute_of(now))
        return standing(self.buckets, self.total, limit, now)


__all__ = [
    "BUCKET_SECONDS",
    "WINDOW_MINUTES",
    "Bucket",
    "QuotaWindow",
    "Standing",
    "bucket",
    "expiry",
    "minute_of",
    "oldest_live",
    "peek",
    "refill",
    "standing",
    "take_one",
]
