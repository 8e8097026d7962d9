"""The models Ollama has: "is this a model?" for routing, and bounded metric labels.

Anything a request names is only a model if Ollama has it, so metric labels and the catch-all model
route consult what Ollama said instead of trusting the request. An unknown name refreshes the list at
most once per :data:`MIN_REFRESH_SECONDS`; a name still missing is asked of ``/api/show`` (a model can
answer there without being listed), at most :data:`SHOW_LOOKUPS_PER_SECOND` a second and then
remembered for :data:`MISSING_SECONDS`, so a flood of invented names costs Ollama a few calls a second.
"""

from __future__ import annotations

import difflib
import time
from typing import TYPE_CHECKING, Final, TypeVar

import structlog

from minato.errors import MinatoError, ModelNotFoundError
from minato.ollama.names import canonical_model_name
from minato.tasks import SingleFlight

if TYPE_CHECKING:
    from minato.ollama.wire import TagsResponse
    from minato.upstream.protocol import Ollama

logger = structlog.get_logger("minato.catalog")
T = TypeVar("T")

#: A name missing from a list younger than this is taken as unknown without asking Ollama again.
MIN_REFRESH_SECONDS: Final = 1.0
#: Lookups of unlisted names allowed per second; beyond them a name is taken as unknown.
SHOW_LOOKUPS_PER_SECOND: Final = 5
#: How long a name Ollama said it does not have is remembered as missing.
MISSING_SECONDS: Final = 5.0
#: Bound on the names remembered beside the list (found by ``/api/show``, or missing).
MAX_REMEMBERED: Final = 4096
#: The metric label of every model Ollama does not have.
OTHER: Final = "other"


class ModelCatalog:
    """The installed models, by canonical name, refreshed on demand and by the reachability probe."""

    def __init__(self, upstream: Ollama, *, min_refresh_seconds: float = MIN_REFRESH_SECONDS) -> None:
        self.upstream = upstream
        self.min_refresh_seconds = min_refresh_seconds
        self._names: dict[str, str] = {}
        self._shown: dict[str, str] = {}
        self._missing: dict[str, float] = {}
        self._listed_at: float | None = None
        self._lists: SingleFlight[None, bool] = SingleFlight("minato-catalog-list")
        self._shows: SingleFlight[str, bool | None] = SingleFlight("minato-catalog-show")
        self._lookups = (0.0, 0)  # start of the current second, lookups made in it

    def record(self, tags: TagsResponse) -> None:
        """Take the list Ollama just gave (by whoever asked for it)."""
        self._names = {canonical_model_name(m.name or m.model): m.name or m.model for m in tags.models}
        self._listed_at = time.monotonic()

    def forget(self) -> None:
        """Make the next question ask Ollama (after a pull or a delete changed what it has)."""
        self._listed_at = None
        self._missing.clear()

    async def refresh(self) -> bool:
        """Ask Ollama for its models; ``False`` when it cannot answer. Concurrent calls share one request."""
        return await self._lists.run(None, self._list)

    async def _list(self) -> bool:
        try:
            self.record(await self.upstream.list_models())
        except MinatoError as exc:
            logger.debug("model_list_unavailable", detail=exc.detail)
            return False
        return True

    async def knows(self, model: str) -> bool | None:
        """Whether Ollama has ``model``; ``None`` when Ollama cannot be asked (so nobody can tell)."""
        key = canonical_model_name(model)
        if key in self._names or key in self._shown:
            return True
        listed_at = self._listed_at
        if listed_at is None or time.monotonic() - listed_at >= self.min_refresh_seconds:
            if not await self.refresh():
                return None
            if key in self._names:
                return True
        return await self._show(model, key)

    async def _show(self, model: str, key: str) -> bool | None:
        now = time.monotonic()
        missing_since = self._missing.get(key)
        if missing_since is not None and now - missing_since < MISSING_SECONDS:
            return False
        if self._shows.pending(key):  # many requests for one unlisted model share one lookup
            return await self._shows.run(key, lambda: self._look_up(model, key, now))
        second, made = self._lookups
        if now - second >= 1.0:
            second, made = now, 0
        if made >= SHOW_LOOKUPS_PER_SECOND:
            return False  # a flood of invented names: no more lookups this second
        self._lookups = (second, made + 1)
        return await self._shows.run(key, lambda: self._look_up(model, key, now))

    async def _look_up(self, model: str, key: str, now: float) -> bool | None:
        try:
            await self.upstream.facts(model)
        except ModelNotFoundError:
            _remember(self._missing, key, now)
            return False
        except MinatoError as exc:
            logger.debug("model_lookup_unavailable", detail=exc.detail)
            return None
        _remember(self._shown, key, model)
        return True

    def label(self, model: str | None) -> str:
        """The metric label of ``model``: its name as Ollama lists it, or ``other``; empty for no model."""
        if not model:
            return ""
        key = canonical_model_name(model)
        return self._names.get(key) or self._shown.get(key) or OTHER

    def similar(self, name: str, limit: int = 3) -> list[str]:
        """Installed models whose names look like ``name`` (for a helpful 404)."""
        return difflib.get_close_matches(name, list(self._names.values()), n=limit, cutoff=0.6)


def _remember(memory: dict[str, T], key: str, value: T) -> None:
    if len(memory) >= MAX_REMEMBERED:
        memory.clear()  # bounded: forgetting costs a lookup, never correctness
    memory[key] = value
