"""Who is calling: a caller's role, its models, its limits. A leaf: the guard makes callers
(:mod:`minato.web.auth`), the policy (:mod:`minato.core.policy`), the state and the records read them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Final

from minato.ollama.names import canonical_model_name


class Role(enum.IntEnum):
    """What a key may do; a higher role may do everything a lower one may, except that a metrics key
    may only read ``/metrics`` (which a user key may not: :class:`minato.core.policy.Policy` decides)."""

    METRICS = 0
    USER = 1
    ADMIN = 2


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller, with what its key may do.

    ``fingerprint`` (12 hex digits of the key's digest) owns its conversations; it is empty for the
    anonymous caller of a keyless deployment. ``name`` labels its log lines and metrics: the name a
    keys file gives it, else the fingerprint.
    """

    fingerprint: str
    role: Role
    name: str
    models: tuple[str, ...] | None = None
    """Glob patterns on canonical model names the key may use; ``None``: every model."""
    requests_per_minute: int = 0
    """0: no limit."""
    tokens_per_day: int = 0
    """Generated tokens per rolling 24 h; 0: no quota."""
    max_concurrent: int = 0
    """Generations it may run at once, across every process (0: no bound); more wait their key's turn."""
    weight: int = 1
    """Its share of the turns when several keys wait for a generation slot."""

    @property
    def is_admin(self) -> bool:
        """Whether the caller may manage models and see every key's conversations."""
        return self.role >= Role.ADMIN

    def allows(self, model: str) -> bool:
        """Whether the key may use ``model`` (any spelling: it is matched by its canonical name)."""
        if self.models is None:
            return True
        canonical = canonical_model_name(model)
        return any(fnmatchcase(canonical, pattern) for pattern in self.models)


#: Everyone, in a deployment without keys: as today, free to do anything (such a deployment is only
#: served on loopback, or behind something that authenticates).
ANONYMOUS: Final = Caller(fingerprint="", role=Role.ADMIN, name="anonymous")


__all__ = ["ANONYMOUS", "Caller", "Role"]
