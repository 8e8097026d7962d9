"""Charging what an answer generated to its key's token quota: once per request, whichever way it ended.

The tokens are those the request's record counted as they were relayed (Ollama's own count replaces
them when the answer completes), so an answer the client leaves, or that Ollama breaks off, is
charged what it relayed. Whoever ends the answer calls :meth:`Usage.charge`: the generation when it
releases its lease or closes its stream, the doors' relay when it closes Ollama's answer; a second
call (a stream closed both by its end and by its response) charges nothing more.
"""

from __future__ import annotations

import structlog

from minato.auth.caller import Caller
from minato.observability.record import RequestRecord
from minato.state.protocols import Quota

logger = structlog.get_logger("minato.usage")


class Usage:
    """One request's generated tokens, to be charged to its caller's quota exactly once."""

    __slots__ = ("_caller", "_charged", "_quota", "_record")

    def __init__(self, quota: Quota, caller: Caller | None, record: RequestRecord | None) -> None:
        self._quota = quota
        self._caller = caller
        self._record = record
        self._charged = False

    async def charge(self) -> None:
        """Charge the tokens counted so far (the first call only; nothing without a caller or tokens)."""
        if self._charged:
            return
        self._charged = True
        record, caller = self._record, self._caller
        if record is None or caller is None or not record.tokens:
            return
        try:
            await self._quota.charge(caller, record.tokens)
        except Exception:  # a quota that cannot count (or is gone) must not fail an answer Ollama gave
            logger.exception("token_quota_charge_failed", tokens=record.tokens)


__all__ = ["Usage"]
