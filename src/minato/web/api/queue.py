"""``GET /queue``: the generations running and waiting in the process that answers."""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.di import NamedDependency
from litestar.params import Parameter

from minato.auth.caller import Caller
from minato.core.admission import Admission
from minato.core.policy import Policy
from minato.core.queue_report import QueueReport, queue_report


@get(
    "/queue",
    operation_id="Queue",
    summary="The generation queue",
    description=(
        "The generations running (model, key, backend, seconds running) and waiting (model, key, position in "
        "the order the fair queue serves them, seconds waiting) in the process that answers, with totals. "
        "An admin key sees every key's, or one key's with `key`; a user key only its own (its positions "
        "are still among everyone's). Each worker and replica has its own queue."
    ),
    tags=["health"],
)
async def queue(
    admission: NamedDependency[Admission],
    policy: NamedDependency[Policy],
    caller: NamedDependency[Caller],
    key: Annotated[
        str | None,
        Parameter(
            max_length=256,
            description="Only this key's generations (by its name). Admin keys; a user key may name only itself.",
        ),
    ] = None,
) -> QueueReport:
    """Report this process's queue as the caller may see it."""
    return queue_report(admission, policy.queue_scope(caller, key), key)
