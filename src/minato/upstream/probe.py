"""The probe: every few seconds, which backends answer, and which models do they have and run?"""

from __future__ import annotations

import asyncio

from minato.errors import MinatoError
from minato.observability.metrics import Metrics
from minato.tasks import cancel_and_wait
from minato.upstream.ports import Status


class OllamaProbe:
    """Keeps the backends' health and inventory current (``minato_ollama_up``, ``minato_backend_up``,
    routing, and which names are models, so metric labels follow models installed behind Minato's back)."""

    def __init__(self, metrics: Metrics, upstream: Status, interval: float) -> None:
        self.metrics = metrics
        self.upstream = upstream
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Probe every ``interval`` seconds from now on (0: never)."""
        if self.interval > 0:
            self._task = asyncio.create_task(self._forever(), name="minato-ollama-probe")

    async def stop(self) -> None:
        """Stop probing."""
        await cancel_and_wait(self._task)

    async def _forever(self) -> None:
        while True:
            try:
                tags = await self.upstream.probe()
            except MinatoError:
                tags = None
            self.metrics.ollama_up.set(0 if tags is None else 1)
            await asyncio.sleep(self.interval)
