"""Charging what an answer generated to its key's token quota, and counting it in the key's usage: once
per request, whichever way it ended.

The tokens are those the request's record counted as they were relayed (Ollama's own count replaces
them when the answer completes), so an answer the client leaves, or that Ollama breaks off, is
charged what it relayed. Whoever ends the answer calls :meth:`Usage.charge`: the generation when it
releases its lease or closes its stream, the doors' relay when it closes Ollama's answer; a second
call (a stream closed both by its end and by its response) charges nothing more.

The usage ledger (:mod:`minato.state.usage`) counts a request once Ollama accepted it (:meth:`Usage.began`:
its answer began), whether the answer completed, broke off or was left by its client: one request, the
prompt's tokens if Ollama said them (else 0) and the tokens counted as above. A request refused before,
by Minato or by Ollama, generated nothing and counts nothing. A key without a name counts under its
fingerprint (its :attr:`~minato.auth.caller.Caller.name`), a keyless deployment as ``anonymous``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from minato.auth.caller import ANONYMOUS, Caller
from minato.observability.record import RequestRecord
from minato.ollama.names import canonical_model_name
from minato.state.protocols import Quota, UsageLedger

logger = structlog.get_logger("minato.usage")


@dataclass(slots=True, eq=False)
class Usage:
    """One request's generated tokens, to be charged to its caller's quota and counted in its usage
    exactly once."""

    quota: Quota
    ledger: UsageLedger
    caller: Caller | None
    record: RequestRecord | None
    model: str | None
    _charged: bool = field(default=False, init=False)
    _began: bool = field(default=False, init=False)

    def began(self) -> None:
        """Note that Ollama accepted the request (its answer began): it counts in the key's usage."""
        self._began = True

    async def charge(self) -> None:
        """Charge the tokens counted so far (the first call only; nothing without a caller or tokens), and
        count the request in its key's usage if Ollama accepted it."""
        if self._charged:
            return
        self._charged = True
        record, caller = self.record, self.caller
        if self._began and self.model is not None:
            completion = (record.tokens or 0) if record is not None else 0
            prompt = (record.prompt_tokens or 0) if record is not None else 0
            name = (caller or ANONYMOUS).name
            self.ledger.count(name, canonical_model_name(self.model), prompt, completion)
        if record is None or caller is None or not record.tokens:
            return
        try:
            await self.quota.charge(caller, record.tokens)
        except Exception:  # a quota that cannot count (or is gone) must not fail an answer Ollama gave
            logger.exception("token_quota_charge_failed", tokens=record.tokens)


__all__ = ["Usage"]
