"""The one module that asks Ollama: a long-lived connection pool, the deadlines of every call.

Everything above this package sees msgspec Structs and :mod:`minato.errors` exceptions, never an HTTP
library's. The bytes travel through the relay engine (:mod:`minato.upstream.engine`: keep-alive
connections pooled per backend, httptools parsing the answers); answers that arrive over time are read
by :mod:`minato.upstream.streams`; what Ollama's failures mean in Minato's words is decided in
:mod:`minato.upstream.failures`.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Final

import msgspec
from msgspec import UNSET, UnsetType

from minato.errors import OllamaTimeoutError, UpstreamError
from minato.ollama.names import canonical_model_name
from minato.ollama.wire import (
    ChatChunk,
    ChatRequest,
    ChunkMessage,
    DeleteRequest,
    LoadRequest,
    PsResponse,
    PullRequest,
    ShowRequest,
    ShowResponse,
    TagsResponse,
    VersionResponse,
)
from minato.tasks import SingleFlight
from minato.upstream.engine.connections import Connections, Origin
from minato.upstream.failures import status_error
from minato.upstream.ports import Forward
from minato.upstream.streams import ChunkStream, PullStream, RawResponse

if TYPE_CHECKING:  # only a type here: settings read Ollama's option table from this package
    from minato.settings import Settings
    from minato.upstream.engine.exchange import Exchange

_JSON: Final = "application/json"
_encoder: Final = msgspec.json.Encoder()


def connections_for(settings: Settings) -> Connections:
    """The engine's keep-alive connections for ``settings``' backends (one pool, a host pool per backend)."""
    return Connections(limit=settings.max_connections, connect_timeout=settings.connect_timeout)


class ModelFacts(msgspec.Struct, frozen=True):
    """What Minato needs to know of a model before it asks for an answer."""

    capabilities: frozenset[str]
    context_length: int | None
    """The longest context the model was trained for (``<architecture>.context_length``)."""

    @classmethod
    def of(cls, shown: ShowResponse) -> ModelFacts:
        """Read the facts off an ``/api/show`` answer."""
        info = shown.model_info or {}
        context = info.get(f"{info.get('general.architecture', '')}.context_length")
        return cls(frozenset(shown.capabilities), context if isinstance(context, int) and context > 0 else None)


class OllamaClient:
    """Async access to one Ollama daemon over a single connection pool."""

    def __init__(self, settings: Settings, *, connections: Connections | None = None) -> None:
        self.settings = settings
        self.base_url = settings.ollama_url
        self._origin = Origin.of(settings.ollama_url)
        self._own = connections is None
        self._connections = connections if connections is not None else connections_for(settings)
        # The operator's headers (MINATO_OLLAMA_HEADERS) go on every request; the client's never do.
        self._extra = "".join(f"{name}: {value}\r\n" for name, value in settings.ollama_headers.items())
        self._heads: dict[tuple[str, str, str | None, str], bytes] = {}
        self._capabilities: dict[str, tuple[float, ModelFacts]] = {}
        self._lookups: SingleFlight[str, ModelFacts] = SingleFlight("minato-facts")

    async def aclose(self) -> None:
        """Close the connection pool (unless it is shared: its owner closes it)."""
        if self._own:
            await self._connections.aclose()

    def _request(self, method: str, path: str, body: bytes | None, content_type: str | None, accept: str) -> bytes:
        """The request's bytes, whole: the request line and headers (kept per kind of request), the body."""
        key = (method, path, content_type, accept)
        head = self._heads.get(key)
        if head is None:
            typed = f"content-type: {content_type}\r\n" if content_type is not None and body is not None else ""
            head = self._heads[key] = (
                f"{method} {self._origin.prefix}{path} HTTP/1.1\r\nhost: {self._origin.authority}\r\n"
                f"{self._extra}{typed}accept: {accept}\r\n"
            ).encode("latin-1")
        if body is None:
            return head + b"\r\n"
        return b"%scontent-length: %d\r\n\r\n%s" % (head, len(body), body)

    async def _send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers_within: float,
        late: str,
        *,
        whole_within: float | None = None,
        idle_timeout: float | None = None,
    ) -> Exchange:
        request = self._request(method, path, body, _JSON if body is not None else None, _JSON)
        return await self._connections.exchange(
            self._origin,
            request,
            ollama_url=self.base_url,
            headers_within=headers_within,
            late=late,
            idle_timeout=self.settings.idle_timeout if idle_timeout is None else idle_timeout,
            whole_within=whole_within,
        )

    # -- generation -------------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatChunk:
        """Return Ollama's whole answer to a chat request, with its final counters.

        Asked for as a stream and put together here: Ollama's non-streamed answer says nothing until it
        is complete, so only a stream lets the first-token and idle deadlines apply to whole answers too.
        """
        content: list[str] = []
        thinking: list[str] = []
        last: ChatChunk | None = None
        # The whole answer, the wait for its first token included, is bounded by the exchange's own timer.
        stream = await self.stream_chat(request)
        try:
            async for batch in stream.batches():
                for chunk in batch:
                    content.append(chunk.message.content)
                    thinking.append(chunk.message.thinking)
                last = batch[-1] if batch else last
        finally:
            stream.close()
        if last is None:  # batches() only ends after a done chunk; this keeps the type honest
            raise UpstreamError("Ollama closed the stream before it was done")
        message = ChunkMessage(role=last.message.role, content="".join(content), thinking="".join(thinking))
        return msgspec.structs.replace(last, message=message)

    async def stream_chat(self, request: ChatRequest) -> ChunkStream:
        """Send a streamed chat request and return it once its first tokens have arrived."""
        # How Minato talks to Ollama is this module's decision, not the caller's (whose struct is left as it was).
        body = _encoder.encode(msgspec.structs.replace(request, stream=True))
        # One deadline covers the response headers and the first line: Ollama sends both together.
        deadline = asyncio.get_running_loop().time() + self.settings.first_token_timeout
        exchange = await self._open_stream("/api/chat", body, request.model, self.settings.request_timeout)
        stream = ChunkStream(exchange, self.settings.idle_timeout)
        await stream.prime(deadline, self.settings.first_token_timeout)
        return stream

    # -- model management -------------------------------------------------------------------

    async def pull(self, model: str) -> PullStream:
        """Start pulling ``model``; return once Ollama has found its manifest (or fail with 404)."""
        body = _encoder.encode(PullRequest(model=model))
        deadline = asyncio.get_running_loop().time() + self.settings.first_token_timeout
        # Checksums of multi-GB blobs can keep Ollama silent for minutes, so the gap allowed
        # between progress lines is the generous first-token budget, not the token idle budget.
        idle = self.settings.first_token_timeout
        exchange = await self._open_stream("/api/pull", body, model, None, idle)
        stream = PullStream(exchange, idle)
        await stream.prime(deadline, self.settings.first_token_timeout)
        self.forget(model)
        return stream

    async def load(self, model: str, keep_alive: float | str | UnsetType, options: dict[str, Any]) -> None:
        """Load ``model`` into memory; return once Ollama reports it ready (a cold load takes a while)."""
        body = _encoder.encode(LoadRequest(model=model, stream=False, keep_alive=keep_alive, options=options or UNSET))
        await self._call("POST", "/api/generate", body, self.settings.first_token_timeout, model)

    async def unload(self, model: str) -> None:
        """Ask Ollama to unload ``model`` (answered at once; fine if it was not loaded)."""
        body = _encoder.encode(LoadRequest(model=model, stream=False, keep_alive=0))
        await self._call("POST", "/api/generate", body, self.settings.control_timeout, model)

    async def delete(self, model: str) -> None:
        """Delete ``model`` from Ollama's disk."""
        body = _encoder.encode(DeleteRequest(model=model))
        await self._call("DELETE", "/api/delete", body, self.settings.control_timeout, model)
        self.forget(model)

    async def running(self) -> PsResponse:
        """Return the models loaded in memory now."""
        body = await self._call("GET", "/api/ps", None, self.settings.control_timeout, "")
        return msgspec.json.decode(body, type=PsResponse)

    async def list_models(self) -> TagsResponse:
        """Return the installed models."""
        body = await self._call("GET", "/api/tags", None, self.settings.control_timeout, "")
        return msgspec.json.decode(body, type=TagsResponse)

    async def show(self, model: str) -> ShowResponse:
        """Return a model's details and capabilities."""
        payload = _encoder.encode(ShowRequest(model=model))
        body = await self._call("POST", "/api/show", payload, self.settings.control_timeout, model)
        return msgspec.json.decode(body, type=ShowResponse)

    async def capabilities(self, model: str) -> frozenset[str]:
        """Return a model's capabilities (cached, see :meth:`facts`)."""
        return (await self.facts(model)).capabilities

    async def facts(self, model: str) -> ModelFacts:
        """Return what ``/api/show`` says of a model that Minato needs, cached for ``capabilities_ttl`` seconds.

        Concurrent lookups of the same model share one ``/api/show`` call.
        """
        key = canonical_model_name(model)
        cached = self._capabilities.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        return await self._lookups.run(key, lambda: self._look_up(model, key, now))

    async def _look_up(self, model: str, key: str, now: float) -> ModelFacts:
        facts = ModelFacts.of(await self.show(model))
        self._capabilities[key] = (now + self.settings.capabilities_ttl, facts)
        return facts

    def forget(self, model: str) -> None:
        """Drop cached facts about ``model`` (after it was pulled or deleted)."""
        self._capabilities.pop(canonical_model_name(model), None)

    async def version(self) -> str:
        """Return Ollama's version string."""
        body = await self._call("GET", "/api/version", None, self.settings.control_timeout, "")
        return msgspec.json.decode(body, type=VersionResponse).version

    # -- relaying --------------------------------------------------------------------------

    async def forward(self, request: Forward) -> RawResponse:
        """Send ``request.body`` to Ollama's ``request.path`` as it is and return the answer as it arrives.

        The status and headers are known when this returns (within ``headers_within`` seconds,
        by default ``MINATO_FIRST_TOKEN_TIMEOUT``, which covers a cold model load); the body is then
        read chunk by chunk, each chunk the moment it arrives, with ``MINATO_IDLE_TIMEOUT`` between
        chunks and, with ``whole_within``, the whole body within that many seconds (a generation's
        ``MINATO_REQUEST_TIMEOUT``; a pull has no such bound). Only Ollama's URL, the content type and
        ``MINATO_OLLAMA_HEADERS`` travel: nothing of the client's request (keys, cookies, ``Host``) reaches Ollama.
        """
        budget = self.settings.first_token_timeout if request.headers_within is None else request.headers_within
        sent = self._request(request.method, request.path, request.body, request.content_type, "*/*")
        exchange = await self._connections.exchange(
            self._origin,
            sent,
            ollama_url=self.base_url,
            headers_within=budget,
            late=f"Ollama did not start answering within {budget:g} s",
            idle_timeout=self.settings.idle_timeout,
            whole_within=request.whole_within,
        )
        return RawResponse.of(exchange, self.settings.idle_timeout)

    # -- plumbing ---------------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: bytes | None, deadline: float, model: str) -> bytes:
        """Make one buffered call; return the body of a 2xx answer or raise a Minato error."""
        late = f"Ollama did not answer {path} within {deadline:g} s"
        exchange = await self._send(method, path, body, deadline, late, whole_within=deadline)
        try:
            content = await exchange.read()
        except OllamaTimeoutError:
            raise OllamaTimeoutError(late) from None
        finally:
            exchange.close()
        if exchange.status >= 400:
            raise status_error(exchange.status, content, model)
        return content

    async def _open_stream(
        self, path: str, body: bytes, model: str, whole_within: float | None, idle_timeout: float | None = None
    ) -> Exchange:
        late = f"Ollama did not start answering within {self.settings.first_token_timeout:g} s"
        exchange = await self._send(
            "POST",
            path,
            body,
            self.settings.first_token_timeout,
            late,
            whole_within=whole_within,
            idle_timeout=idle_timeout,
        )
        if exchange.status >= 400:
            try:
                content = await exchange.read()
            finally:
                exchange.close()
            raise status_error(exchange.status, content, model)
        return exchange
