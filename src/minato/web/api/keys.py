"""``GET /keys`` (admin): every key in force in this process, as ``minato keys list --json`` shows the
keys file, but with the limits that apply (the deployment's defaults filled in), and the keys of the
plain lists (``MINATO_API_KEYS``...) under their fingerprints. Never a key, never a digest."""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency

from minato.auth.caller import Caller
from minato.auth.keyring import Keyring
from minato.auth.keys import KeyInfo
from minato.web.auth import ADMIN


def key_info(caller: Caller) -> KeyInfo:
    """What ``GET /keys`` says of one key."""
    return KeyInfo(
        name=caller.name,
        role=caller.role.name.lower(),
        models=None if caller.models is None else list(caller.models),
        requests_per_minute=caller.requests_per_minute,
        tokens_per_day=caller.tokens_per_day,
        max_concurrent=caller.max_concurrent,
        weight=caller.weight,
    )


@get("/keys", operation_id="ListKeys", summary="The keys in force", tags=["keys"], opt={ADMIN: True})
async def list_keys(keyring: NamedDependency[Keyring]) -> list[KeyInfo]:
    """Every key this process accepts now (the keys file is reloaded within seconds of a change, and
    on `SIGHUP`): its name, role, models and limits, never the key. An admin key's route."""
    return [key_info(caller) for _, caller in keyring.callers]


__all__ = ["key_info", "list_keys"]
