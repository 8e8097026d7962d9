"""The reachability probe: every few seconds, is Ollama there, and which models does it have?"""

from __future__ import annotations

import asyncio

from minato.disconnect import cancel_and_wait
from minato.errors import MinatoError
from minato.metrics import Metrics
from minato.upstream.catalog import ModelCatalog


class OllamaProbe:
    """Keeps ``minato_ollama_up`` current and refreshes the model catalog, so metric labels follow
    models installed behind Minato's back."""

    def __init__(self, metrics: Metrics, catalog: ModelCatalog, interval: float) -> None:
        self.metrics = metrics
        self.catalog = catalog
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
                await self.catalog.upstream.version()
            except MinatoError:
                self.metrics.ollama_up.set(0)
            else:
                self.metrics.ollama_up.set(1)
                await self.catalog.refresh()
            await asyncio.sleep(self.interval)
