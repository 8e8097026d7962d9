"""The narrow interfaces to Ollama that handlers, the generation and the probe depend on, one per need.

:class:`~minato.upstream.pool.facade.OllamaPool` implements every one of them over one or several
Ollama backends (each an :class:`~minato.upstream.client.OllamaClient`); a test fakes only the ones its
code asks of. Nothing above ``upstream/`` names the concrete classes. A pool answers as one Ollama
would: model lists are merged, a generation goes to the backend routing picks, model management acts
on the fleet. Every failure is a :mod:`minato.errors` exception, never a library's.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import msgspec
from msgspec import UNSET, UnsetType

if TYPE_CHECKING:
    from minato.ollama.wire import ChatChunk, ChatRequest, PsResponse, ShowResponse, TagsResponse
    from minato.upstream.client import ModelFacts
    from minato.upstream.streams import ChunkStream, PullProgressStream, RawResponse


class Spread(enum.Enum):
    """Which backends a forwarded request goes to."""

    ONE = "one"
    """The one routing picks (by the model, when the request names one)."""
    LIST = "list"
    """Every backend, their model lists merged, each model once (``/api/tags``, ``/v1/models``)."""
    LOADED = "loaded"
    """Every backend, their loaded models listed together, each with its backend (``/api/ps``)."""
    EVERY = "every"
    """Every reachable backend (a pull), their progress lines merged."""
    HOLDERS = "holders"
    """Every backend that has the model (a delete)."""


class Forward(msgspec.Struct, frozen=True, gc=False):
    """A request relayed to Ollama as bytes: what one backend is sent, whichever backend that is.

    Built once per relayed request (a Struct costs a quarter of a NamedTuple to make; it holds no
    containers, so the garbage collector need not track it).
    """

    method: str
    path: str
    body: bytes | None
    content_type: str | None = None
    headers_within: float | None = None
    """Seconds Ollama has to send its status and headers (by default ``MINATO_FIRST_TOKEN_TIMEOUT``)."""
    whole_within: float | None = None
    """Seconds the whole body may take (``None``: no bound beyond the idle timeout between chunks)."""


class BackendStatus(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One backend of the pool, as ``/ready`` and ``GET /`` show it."""

    name: str
    """``host:port``: how logs, metrics and answers name it."""
    url: str
    state: str
    """``up`` (answered its last probe), ``down`` (did not), ``cooling`` (failed repeatedly: out of the
    pool until its cool-down ends and a probe answers), or ``unknown`` (not probed yet)."""
    version: str | UnsetType = UNSET
    installed: int = 0
    """How many models it has installed."""
    loaded: list[str] = msgspec.field(default_factory=list)
    """The models it has loaded in memory."""
    in_flight: int = 0
    """Generations Minato is running on it now."""
    reason: str | UnsetType = UNSET
    """Why it is not up."""


class Facts(Protocol):
    """What a model can do, before asking it anything."""

    async def capabilities(self, model: str) -> frozenset[str]:
        """One model's capabilities (cached)."""

    async def facts(self, model: str) -> ModelFacts:
        """What Minato needs to know of a model (cached)."""


class Generator(Facts, Protocol):
    """Answers. ``affinity`` names a conversation: its turns go to the backend it last used while that
    one is healthy and has the model."""

    async def chat(self, request: ChatRequest, *, affinity: str | None = None) -> ChatChunk:
        """A whole answer, with Ollama's final counters."""

    async def stream_chat(self, request: ChatRequest, *, affinity: str | None = None) -> ChunkStream:
        """A stream, returned once its first tokens arrived (so its status is known)."""


class Relay(Protocol):
    """A door's request relayed as bytes."""

    async def forward(
        self, request: Forward, *, model: str | None = None, generation: bool = False, spread: Spread = Spread.ONE
    ) -> RawResponse:
        """Relay ``request``: status and headers first, then the body as it arrives (see :class:`Forward`).
        ``model`` routes it; a ``generation`` counts as one in flight on its backend until closed."""


class Models(Protocol):
    """What the backends have."""

    def holders(self, model: str) -> list[str]:
        """The backends that have ``model`` installed, as last seen."""

    async def list_models(self) -> TagsResponse:
        """The models installed, each once."""

    async def running(self) -> PsResponse:
        """The models loaded now, each with its backend."""

    async def show(self, model: str) -> ShowResponse:
        """One model's details."""


class Fleet(Models, Protocol):
    """Model management on every backend."""

    async def pull(self, model: str, backend: str | None = None) -> PullProgressStream:
        """Start pulling onto every reachable backend (or the named one); return once the manifest was
        found (or fail with a 404)."""

    async def load(
        self, model: str, keep_alive: float | str | UnsetType, options: dict[str, Any], backend: str | None = None
    ) -> str:
        """Load a model into memory where routing would send its next request (or on the named
        backend); return the backend's name."""

    async def unload(self, model: str) -> None:
        """Unload a model now, everywhere."""

    async def delete(self, model: str) -> None:
        """Delete a model from the disk of every backend that has it."""


class Status(Protocol):
    """Whether Ollama answers, and how each backend is."""

    base_url: str
    """Where Ollama is (named in errors and in ``/ready``): the backends' URLs, comma-separated."""

    async def probe(self, *, inventory: bool = True) -> TagsResponse | None:
        """Probe every backend (its health, and with ``inventory`` its installed and loaded models); the
        merged model list, or ``None`` when no backend answers."""

    def backends(self) -> list[BackendStatus]:
        """Every backend and its state, as the last probe or request left it."""

    async def version(self) -> str:
        """Ollama's version."""


class Catalog(Protocol):
    """Which names are models: for the catch-all model route and for bounded metric labels."""

    async def knows(self, model: str) -> bool | None:
        """Whether Ollama has ``model``; ``None`` when Ollama cannot be asked (so nobody can tell)."""

    def label(self, model: str | None) -> str:
        """The metric label of ``model``: its name as Ollama lists it, or ``other``; empty for no model."""

    def similar(self, name: str, limit: int = 3) -> list[str]:
        """Installed models whose names look like ``name`` (for a helpful 404)."""


class Overview(Models, Status, Protocol):
    """What the service's front page reads."""


class Listing(Models, Facts, Protocol):
    """What a model list with capabilities reads."""


class Upstream(Generator, Relay, Fleet, Status, Catalog, Protocol):
    """Everything at once: what the runtime opens, holds and closes."""

    async def aclose(self) -> None:
        """Release the connections."""


if TYPE_CHECKING:
    StatusDependency: TypeAlias = Status
    ModelsDependency: TypeAlias = Models
    FleetDependency: TypeAlias = Fleet
    OverviewDependency: TypeAlias = Overview
    ListingDependency: TypeAlias = Listing
else:
    # What handlers declare: to the type checker the Protocol; at run time Any, because Litestar
    # checks every injected dependency against its declared type, and an isinstance check against a
    # Protocol costs about 17 µs a request on Python 3.11.
    StatusDependency = ModelsDependency = FleetDependency = OverviewDependency = ListingDependency = Any
