"""What ``GET /queue`` answers: the generations running and waiting in this process, as a caller may see them."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from minato.auth.caller import Caller
    from minato.core.admission import Admission


class RunningGeneration(msgspec.Struct, frozen=True, kw_only=True):
    """A generation holding a slot."""

    model: str
    key: str
    """The name of the key it runs for (``anonymous`` without keys)."""
    backend: str
    """The backend it went to (``host:port``); empty until Ollama's answer begins (it is learnt from the answer)."""
    seconds: float
    """Seconds since it took its slot."""


class WaitingGeneration(msgspec.Struct, frozen=True, kw_only=True):
    """A generation waiting for a slot (or for a place of its key, at its ``max_concurrent``)."""

    model: str
    key: str
    position: int
    """Its place in the order the fair queue would serve the waiting generations (1: next); those
    waiting for a place of their key come after the others."""
    seconds: float
    """Seconds it has waited."""


class QueueTotals(msgspec.Struct, frozen=True, kw_only=True):
    """How many generations run and wait (of the caller's key only, for a user key)."""

    running: int
    waiting: int


class QueueReport(msgspec.Struct, frozen=True, kw_only=True):
    """The generation queue of the process that answered (each worker and replica has its own)."""

    pid: int
    """The process that answered: fairness and the queue are per process."""
    max_generations: int
    """``MINATO_MAX_GENERATIONS``: the slots of this process."""
    running: list[RunningGeneration]
    waiting: list[WaitingGeneration]
    totals: QueueTotals


def queue_report(admission: Admission, only: Caller | None, key: str | None = None) -> QueueReport:
    """The queue of ``admission``: every key's generations, those of the caller ``only`` (a user key),
    or, for an admin naming ``key``, those of the key with that name."""
    running, waiting = admission.snapshot()

    def shown(caller: Caller) -> bool:
        if only is not None:
            return caller.fingerprint == only.fingerprint
        return key is None or caller.name == key

    runs = [
        RunningGeneration(model=r.model, key=r.caller.name, backend=r.backend, seconds=round(r.seconds, 3))
        for r in running
        if shown(r.caller)
    ]
    waits = [
        WaitingGeneration(model=w.model, key=w.caller.name, position=w.position, seconds=round(w.seconds, 3))
        for w in waiting
        if shown(w.caller)
    ]
    return QueueReport(
        pid=os.getpid(),
        max_generations=admission.total,
        running=runs,
        waiting=waits,
        totals=QueueTotals(running=len(runs), waiting=len(waits)),
    )


__all__ = ["QueueReport", "QueueTotals", "RunningGeneration", "WaitingGeneration", "queue_report"]
