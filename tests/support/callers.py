"""Callers for the queue's tests: user keys with a name, a weight and a bound, as the keyring makes them."""

from __future__ import annotations

from minato.auth.caller import Caller, Role


def key(name: str, *, weight: int = 1, max_concurrent: int = 0) -> Caller:
    """A user key called ``name`` (its fingerprint derived from the name, so each name is one key)."""
    return Caller(
        fingerprint=name.encode().hex().ljust(12, "0")[:12],
        role=Role.USER,
        name=name,
        weight=weight,
        max_concurrent=max_concurrent,
    )


A, B, C = key("alice"), key("bob"), key("carol")
