"""``GET /keys`` (admin): every key in force in this process, as ``minato keys list --json`` shows the
keys file, but with the limits that apply (the deployment's defaults filled in), the keys of the plain
lists (``MINATO_API_KEYS``...) under their fingerprints, and what each used over the rolling 24 h (the
same counts as ``GET /usage``). Never a key, never a digest."""

from __future__ import annotations

from functools import reduce
from typing import Any

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency

from minato.auth.caller import Caller
from minato.auth.keyring import Keyring
from minato.auth.keys import KeyInfo
from minato.core.usage_report import TokenCounts
from minato.state.usage import Tally
from minato.web.auth import ADMIN
from minato.web.runtime import runtime_of


class UsageToday(msgspec.Struct, frozen=True, kw_only=True):
    """A key's generation requests and tokens over the rolling 24 h (``GET /usage`` has the details)."""

    requests: int
    tokens: TokenCounts


class KeyInForce(KeyInfo, frozen=True, kw_only=True):
    """A key as ``GET /keys`` shows it: the limits that apply, and its usage over the rolling 24 h."""

    usage_today: UsageToday


def key_in_force(caller: Caller, models: dict[str, Tally]) -> KeyInForce:
    """What ``GET /keys`` says of one key, given its tallies by model."""
    overall = reduce(Tally.plus, models.values(), Tally())
    return KeyInForce(
        name=caller.name,
        role=caller.role.name.lower(),
        models=None if caller.models is None else list(caller.models),
        requests_per_minute=caller.requests_per_minute,
        tokens_per_day=caller.tokens_per_day,
        max_concurrent=caller.max_concurrent,
        weight=caller.weight,
        usage_today=UsageToday(requests=overall.requests, tokens=TokenCounts.of(overall)),
    )


@get("/keys", operation_id="ListKeys", summary="The keys in force", tags=["keys"], opt={ADMIN: True})
async def list_keys(request: Request[Any, Any, Any], keyring: NamedDependency[Keyring]) -> list[KeyInForce]:
    """Every key this process accepts now (the keys file is reloaded within seconds of a change, and
    on `SIGHUP`): its name, role, models and limits, never the key, and its requests and tokens over
    the rolling 24 h. An admin key's route."""
    callers = [caller for _, caller in keyring.callers]  # one read: a reload swaps the list whole
    totals = await runtime_of(request).state.usage.totals({caller.name for caller in callers})
    return [key_in_force(caller, totals.get(caller.name, {})) for caller in callers]


__all__ = ["KeyInForce", "UsageToday", "key_in_force", "list_keys"]
