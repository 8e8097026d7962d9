"""The models Ollama has, as it last listed them: "is this a model?" for routing, bounded metric labels.

Anything a request names is only a model if Ollama lists it, so metric labels and the catch-all model
route consult this list instead of trusting the request. An unknown name refreshes the list at most
once per :data:`MIN_REFRESH_SECONDS`, so a flood of invented names costs Ollama one ``/api/tags`` a second.
"""

from __future__ import annotations

import asyncio
import difflib
import time
from typing import TYPE_CHECKING, Final

import structlog

from minato.errors import MinatoError
from minato.upstream.names import canonical_model_name

if TYPE_CHECKING:
    from minato.upstream.client import OllamaClient
    from minato.upstream.wire import TagsResponse

logger = structlog.get_logger("minato.catalog")

#: A name missing from a list younger than this is taken as unknown without asking Ollama again.
MIN_REFRESH_SECONDS: Final = 1.0
#: The metric label of every model Ollama does not list.
OTHER: Final = "other"


class ModelCatalog:
    """The installed models, by canonical name, refreshed on demand and by the reachability probe."""

    def __init__(self, upstream: OllamaClient, *, min_refresh_seconds: float = MIN_REFRESH_SECONDS) -> None:
        self.upstream = upstream
        self.min_refresh_seconds = min_refresh_seconds
        self._names: dict[str, str] = {}
        self._listed_at: float | None = None
        self._pending: asyncio.Future[bool] | None = None

    def record(self, tags: TagsResponse) -> None:
        """Take the list Ollama just gave (by whoever asked for it)."""
        self._names = {canonical_model_name(m.name or m.model): m.name or m.model for m in tags.models}
        self._listed_at = time.monotonic()

    def forget(self) -> None:
        """Make the next question ask Ollama (after a pull or a delete changed what it has)."""
        self._listed_at = None

    async def refresh(self) -> bool:
        """Ask Ollama for its models; ``False`` when it cannot answer. Concurrent calls share one request."""
        if self._pending is not None:
            return await asyncio.shield(self._pending)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending = future
        listed = False
        try:
            self.record(await self.upstream.list_models())
            listed = True
        except MinatoError as exc:
            logger.debug("model_list_unavailable", detail=exc.detail)
        finally:
            self._pending = None
            future.set_result(listed)  # also when this caller was cancelled: the others must not hang
        return listed

    async def knows(self, model: str) -> bool | None:
        """Whether Ollama has ``model``; ``None`` when Ollama cannot be asked (so nobody can tell)."""
        key = canonical_model_name(model)
        if key in self._names:
            return True
        listed_at = self._listed_at
        if listed_at is not None and time.monotonic() - listed_at < self.min_refresh_seconds:
            return False
        if not await self.refresh():
            return None
        return key in self._names

    def label(self, model: str | None) -> str:
        """The metric label of ``model``: its name as Ollama lists it, or ``other``; empty for no model."""
        if not model:
            return ""
        return self._names.get(canonical_model_name(model), OTHER)

    def similar(self, name: str, limit: int = 3) -> list[str]:
        """Installed models whose names look like ``name`` (for a helpful 404)."""
        return difflib.get_close_matches(name, list(self._names.values()), n=limit, cutoff=0.6)
