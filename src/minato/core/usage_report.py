"""What ``GET /usage`` tells a key: its requests and tokens over the rolling 24 h, by model, and where it
stands against its quota, its request rate and its bound on generations at once.

The counts are the usage ledger's (:mod:`minato.state.usage`, the same on every process sharing the
state home); the standings are those the guard itself checks, read without taking anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import reduce
from typing import Final, NamedTuple

import msgspec

from minato.auth.caller import Caller
from minato.state.protocols import KeyConcurrency, Quota, RateLimiter, UsageLedger
from minato.state.usage import Tally
from minato.state.windows import WINDOW_MINUTES

#: The window the counts cover, in seconds (the quota's: 24 h).
WINDOW_SECONDS: Final = WINDOW_MINUTES * 60


class TokenCounts(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens, as Ollama counted them."""

    prompt: int
    """Tokens of the prompts (Ollama's ``prompt_eval_count``)."""
    completion: int
    """Tokens generated (Ollama's ``eval_count``; for an answer the client left, those relayed)."""
    total: int
    """Both."""

    @classmethod
    def of(cls, tally: Tally) -> TokenCounts:
        """The tokens of ``tally``."""
        return cls(prompt=tally.prompt, completion=tally.completion, total=tally.prompt + tally.completion)


class ModelUsage(msgspec.Struct, frozen=True, kw_only=True):
    """A key's use of one model over the window."""

    requests: int
    tokens: TokenCounts


class QuotaStanding(msgspec.Struct, frozen=True, kw_only=True):
    """Where a key stands against its token quota (``tokens_per_day``, over a rolling 24 h)."""

    tokens_per_day: int
    remaining: int
    """Tokens it may still generate now."""
    resets_in_seconds: int
    """Seconds until every token counted now has left the window (0: none counted)."""


class RateStanding(msgspec.Struct, frozen=True, kw_only=True):
    """Where a key stands against its request rate."""

    requests_per_minute: int
    remaining: int
    """Requests it may send at once now (its bucket refills at ``requests_per_minute`` a minute)."""


class ConcurrencyStanding(msgspec.Struct, frozen=True, kw_only=True):
    """A key's generations now."""

    max: int
    """Its bound on generations at once (0: none)."""
    running: int
    """Its generations running now, across every process sharing the state."""
    waiting: int
    """Its generations waiting for a slot in the process that answered."""


class KeyUsage(msgspec.Struct, frozen=True, kw_only=True):
    """One key's usage over the rolling 24 h, and its limits."""

    key: str
    """The key's name (its fingerprint when it has none; ``anonymous`` without keys)."""
    role: str
    """``user`` or ``admin``."""
    window_seconds: int = WINDOW_SECONDS
    requests: int
    """Generation requests Ollama accepted, on every route and door."""
    tokens: TokenCounts
    by_model: dict[str, ModelUsage]
    quota: QuotaStanding | None
    """``null``: the key has no token quota."""
    rate: RateStanding | None
    """``null``: the key has no request rate."""
    concurrency: ConcurrencyStanding


class KeysUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Every configured key's usage, by name."""

    keys: list[KeyUsage]


class UsageSources(NamedTuple):
    """Where a report's figures come from (a runtime's parts). ``waiting`` counts a key's generations
    waiting in this process's queue."""

    ledger: UsageLedger
    quota: Quota
    limiter: RateLimiter
    concurrency: KeyConcurrency
    waiting: Callable[[Caller], int]


async def usage_of(callers: Sequence[Caller], sources: UsageSources) -> list[KeyUsage]:
    """The usage of ``callers``, in their order. Raises :class:`~minato.errors.StateUnavailableError`
    when the state home cannot answer."""
    totals = await sources.ledger.totals({caller.name for caller in callers})
    reports = []
    for caller in callers:
        models = totals.get(caller.name, {})
        overall = reduce(Tally.plus, models.values(), Tally())
        reports.append(
            KeyUsage(
                key=caller.name,
                role=caller.role.name.lower(),
                requests=overall.requests,
                tokens=TokenCounts.of(overall),
                by_model={
                    model: ModelUsage(requests=tally.requests, tokens=TokenCounts.of(tally))
                    for model, tally in sorted(models.items())
                },
                quota=await _quota(caller, sources.quota),
                rate=await _rate(caller, sources.limiter),
                concurrency=ConcurrencyStanding(
                    max=caller.max_concurrent,
                    running=await sources.concurrency.running(caller.fingerprint),
                    waiting=sources.waiting(caller),
                ),
            )
        )
    return reports


async def _quota(caller: Caller, quota: Quota) -> QuotaStanding | None:
    if not caller.tokens_per_day:
        return None
    standing = await quota.check(caller)
    return QuotaStanding(
        tokens_per_day=caller.tokens_per_day,
        remaining=standing.left,
        resets_in_seconds=math.ceil(standing.resets),
    )


async def _rate(caller: Caller, limiter: RateLimiter) -> RateStanding | None:
    if not caller.requests_per_minute:
        return None
    bucket = await limiter.peek(caller.fingerprint, caller.requests_per_minute)
    return RateStanding(requests_per_minute=caller.requests_per_minute, remaining=bucket.remaining)


__all__ = [
    "WINDOW_SECONDS",
    "ConcurrencyStanding",
    "KeyUsage",
    "KeysUsage",
    "ModelUsage",
    "QuotaStanding",
    "RateStanding",
    "TokenCounts",
    "UsageSources",
    "usage_of",
]
