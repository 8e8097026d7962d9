"""The one module that talks to Ollama: a long-lived connection pool, timeouts, error translation.

Everything above this module sees msgspec Structs and :mod:`minato.errors` exceptions, never httpx.
Streams are *primed*: the request is sent and the first batch of lines read before the caller
commits to a ``200``, so failures that happen before the first token still get an honest status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import httpx
import msgspec
import structlog
from msgspec import UNSET, UnsetType

from minato.errors import (
    MinatoError,
    ModelNotFoundError,
    OllamaBusyError,
    OllamaTimeoutError,
    OllamaUnavailableError,
    UpstreamError,
    UpstreamRejectedError,
)
from minato.upstream.names import canonical_model_name
from minato.upstream.transport import AiohttpBody, AiohttpTransport, connection_problem
from minato.upstream.wire import (
    ChatChunk,
    ChatRequest,
    ChunkMessage,
    DeleteRequest,
    ErrorBody,
    LoadRequest,
    PsResponse,
    PullProgress,
    PullRequest,
    ShowRequest,
    ShowResponse,
    TagsResponse,
    VersionResponse,
)

if TYPE_CHECKING:  # only a type here: settings read Ollama's option table from this package
    from minato.settings import Settings

_JSON_HEADERS: Final = {"content-type": "application/json", "accept": "application/json"}
_ACCEPT_JSON: Final = {"accept": "application/json"}
_MANIFEST_STATUS: Final = "pulling manifest"
_chunk_decoder: Final = msgspec.json.Decoder(ChatChunk)
_progress_decoder: Final = msgspec.json.Decoder(PullProgress)
_error_decoder: Final = msgspec.json.Decoder(ErrorBody)
_encoder: Final = msgspec.json.Encoder()
logger = structlog.get_logger("minato.upstream")


def default_transport(settings: Settings) -> httpx.AsyncBaseTransport:
    """Return the transport measured fastest on the hot path (aiohttp under httpx's interface)."""
    return AiohttpTransport(max_connections=settings.max_connections)


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

    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.base_url = settings.ollama_url
        # The transport is called directly: httpx.AsyncClient's per-request machinery (URL
        # merging, cookies, auth, redirects, event hooks) buys nothing for one fixed upstream.
        self._transport = transport if transport is not None else default_transport(settings)
        self._urls: dict[str, httpx.URL] = {}
        # Deadlines are enforced per phase with asyncio (first token, idle gap, whole answer);
        # the transport only bounds the TCP connect.
        self._timeouts = {"connect": settings.connect_timeout, "read": None, "write": None, "pool": None}
        # The operator's headers (MINATO_OLLAMA_HEADERS) go on every request; the client's never do.
        extra = dict(settings.ollama_headers)
        self._json_headers = {**extra, **_JSON_HEADERS}
        self._accept_json = {**extra, **_ACCEPT_JSON}
        self._extra_headers = extra
        self._capabilities: dict[str, tuple[float, ModelFacts]] = {}
        self._capability_lookups: dict[str, asyncio.Future[ModelFacts]] = {}

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._transport.aclose()

    async def _send(self, method: str, path: str, body: bytes | None) -> httpx.Response:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self.base_url + path)
        request = httpx.Request(
            method,
            url,
            content=body,
            headers=self._json_headers if body is not None else self._accept_json,
            extensions={"timeout": self._timeouts},
        )
        return await self._transport.handle_async_request(request)

    # -- generation -------------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatChunk:
        """Return Ollama's whole answer to a chat request, with its final counters.

        Asked for as a stream and put together here: Ollama's non-streamed answer says nothing until it
        is complete, so only a stream lets the first-token and idle deadlines apply to whole answers too.
        """
        budget = self.settings.request_timeout
        content: list[str] = []
        thinking: list[str] = []
        last: ChatChunk | None = None
        try:
            async with asyncio.timeout(budget):  # the whole answer, the wait for its first token included
                stream = await self.stream_chat(request)
                try:
                    async for batch in stream.batches():
                        for chunk in batch:
                            content.append(chunk.message.content)
                            thinking.append(chunk.message.thinking)
                        last = batch[-1] if batch else last
                finally:
                    await stream.aclose()
        except TimeoutError:
            raise OllamaTimeoutError(f"the answer took longer than {budget:g} s (MINATO_REQUEST_TIMEOUT)") from None
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
        response = await self._open_stream("/api/chat", body, request.model, deadline)
        stream = ChunkStream(response, self.settings.idle_timeout, self.settings.request_timeout)
        await _primed(stream.prime(), deadline, response, "a first token", self.settings.first_token_timeout)
        return stream

    # -- model management -------------------------------------------------------------------

    async def pull(self, model: str) -> PullStream:
        """Start pulling ``model``; return once Ollama has found its manifest (or fail with 404)."""
        body = _encoder.encode(PullRequest(model=model))
        deadline = asyncio.get_running_loop().time() + self.settings.first_token_timeout
        response = await self._open_stream("/api/pull", body, model, deadline)
        # Checksums of multi-GB blobs can keep Ollama silent for minutes, so the gap allowed
        # between progress lines is the generous first-token budget, not the token idle budget.
        stream = PullStream(response, self.settings.first_token_timeout)
        await _primed(stream.prime(), deadline, response, "pull progress", self.settings.first_token_timeout)
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
        pending = self._capability_lookups.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ModelFacts] = asyncio.get_running_loop().create_future()
        self._capability_lookups[key] = future
        try:
            facts = ModelFacts.of(await self.show(model))
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._capability_lookups[key]
        future.set_result(facts)
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

    async def forward(
        self,
        method: str,
        path: str,
        body: bytes | None,
        *,
        content_type: str | None = None,
        headers_within: float | None = None,
    ) -> RawResponse:
        """Send ``body`` to Ollama's ``path`` as it is and return the answer as it arrives.

        The status and headers are known when this returns (within ``headers_within`` seconds,
        by default ``MINATO_FIRST_TOKEN_TIMEOUT``, which covers a cold model load); the body is then
        read chunk by chunk, each chunk the moment it arrives, with ``MINATO_IDLE_TIMEOUT`` between
        chunks. Only Ollama's URL, the content type and ``MINATO_OLLAMA_HEADERS`` travel: nothing of
        the client's request (keys, cookies, ``Host``) reaches Ollama.
        """
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self.base_url + path)
        headers = {**self._extra_headers, "accept": "*/*"}
        if content_type is not None:
            headers["content-type"] = content_type
        request = httpx.Request(method, url, content=body, headers=headers, extensions={"timeout": self._timeouts})
        budget = self.settings.first_token_timeout if headers_within is None else headers_within
        try:
            async with asyncio.timeout(budget):
                response = await self._transport.handle_async_request(request)
        except TimeoutError:
            raise OllamaTimeoutError(f"Ollama did not start answering within {budget:g} s") from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        return RawResponse(response, self.settings.idle_timeout, self.base_url)

    # -- plumbing ---------------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: bytes | None, deadline: float, model: str) -> bytes:
        """Make one buffered call; return the body of a 2xx answer or raise a Minato error."""
        try:
            async with asyncio.timeout(deadline):
                response = await self._send(method, path, body)
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        except TimeoutError:
            raise OllamaTimeoutError(f"Ollama did not answer {path} within {deadline:g} s") from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if response.status_code >= 400:
            raise status_error(response.status_code, response.content, model)
        return response.content

    async def _open_stream(self, path: str, body: bytes, model: str, deadline: float) -> httpx.Response:
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._send("POST", path, body)
                if response.status_code >= 400:
                    try:
                        content = await response.aread()
                    finally:
                        await response.aclose()
                    raise status_error(response.status_code, content, model)
        except TimeoutError:
            raise OllamaTimeoutError(
                f"Ollama did not start answering within {self.settings.first_token_timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        return response

    def _transport_error(self, exc: httpx.HTTPError) -> MinatoError:
        """Minato's sentence for a failed exchange with Ollama; the library's text goes to the log."""
        _log_library_error("ollama_connection_failed", exc, self.base_url)
        url = self.base_url
        host = httpx.URL(url).host
        if isinstance(exc, httpx.ConnectTimeout):
            return OllamaUnavailableError(
                f"Ollama is unreachable at {url}: no connection within "
                f"{self.settings.connect_timeout:g} s (MINATO_CONNECT_TIMEOUT)"
            )
        if isinstance(exc, httpx.TimeoutException):
            return OllamaTimeoutError(f"Ollama at {url} did not answer in time")
        if isinstance(exc, httpx.ConnectError):
            return OllamaUnavailableError(f"Ollama is unreachable at {url}: {connection_problem(exc, host)}")
        if isinstance(exc, httpx.RemoteProtocolError):
            return UpstreamError(f"Ollama at {url} closed the connection before answering")
        return UpstreamError(f"the connection to Ollama at {url} failed: {connection_problem(exc, host)}")


class RawResponse:
    """Ollama's answer to a forwarded request: status and headers now, the body as it arrives."""

    def __init__(self, response: httpx.Response, idle_timeout: float, ollama_url: str) -> None:
        self.status = response.status_code
        self.headers = [(name.lower(), value) for name, value in response.headers.items()]
        self._response = response
        self._idle_timeout = idle_timeout
        self._ollama_url = ollama_url
        self._read_some = _reader_of(response)

    @property
    def content_type(self) -> str:
        """Ollama's ``Content-Type`` (empty when it sent none)."""
        return next((value for name, value in self.headers if name == "content-type"), "")

    async def chunks(self) -> AsyncIterator[bytes]:
        """Each piece of the body the moment it arrives; a failure mid-way raises a Minato error."""
        try:
            while True:
                try:
                    async with asyncio.timeout(self._idle_timeout):
                        data = await self._read_some()
                except TimeoutError:
                    raise OllamaTimeoutError(
                        f"Ollama went silent for {self._idle_timeout:g} s in the middle of an answer"
                    ) from None
                except httpx.HTTPError as exc:
                    _log_library_error("ollama_stream_broke", exc, self._ollama_url)
                    raise UpstreamError(
                        f"the answer from Ollama at {self._ollama_url} broke off before it was complete"
                    ) from None
                if not data:
                    return
                yield data
        finally:
            await self.aclose()

    async def read(self) -> bytes:
        """The whole body."""
        return b"".join([chunk async for chunk in self.chunks()])

    async def aclose(self) -> None:
        """Close the call; Ollama stops working on a request whose client went away."""
        await self._response.aclose()


def _log_library_error(event: str, exc: BaseException, ollama_url: str) -> None:
    cause = exc.__cause__
    logger.warning(
        event,
        ollama_url=ollama_url,
        error=f"{type(exc).__name__}: {_describe(exc)}",
        cause=None if cause is None else f"{type(cause).__name__}: {_describe(cause)}",
    )


def _ollama_url_of(response: httpx.Response) -> str:
    """The Ollama base URL a response came from (its request URL up to ``/api/``)."""
    return str(response.request.url).split("/api/", 1)[0]


async def _primed(prime: Awaitable[None], deadline: float, response: httpx.Response, what: str, budget: float) -> None:
    """Await a stream's priming until the loop-time ``deadline``; close the response on failure."""
    try:
        async with asyncio.timeout_at(deadline):
            await prime
    except TimeoutError:
        await response.aclose()
        raise OllamaTimeoutError(f"Ollama did not send {what} within {budget:g} s") from None
    except BaseException:
        await response.aclose()
        raise


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def status_error(status: int, body: bytes, model: str) -> MinatoError:
    """Translate a non-2xx Ollama answer into the Minato error with the honest status."""
    message = _error_message(body)
    is_ollama_error = body[:1] == b"{"
    if status == 404 and is_ollama_error:
        return ModelNotFoundError(message or f"model '{model}' not found")
    if status == 400:
        return UpstreamRejectedError(message)
    if status in (429, 503):
        return OllamaBusyError(message or "Ollama is busy")
    if status == 403 and not body:
        return UpstreamError(
            "Ollama refused the request (403): it only accepts local Host headers when bound to "
            "loopback; point MINATO_OLLAMA_URL at an address Ollama accepts"
        )
    if status == 404:
        return UpstreamError(f"Ollama answered 404 ({message}); is MINATO_OLLAMA_URL an Ollama server?")
    return UpstreamError(f"Ollama answered {status}: {message}" if message else f"Ollama answered {status}")


def _error_message(body: bytes) -> str:
    if body[:1] == b"{":
        try:
            error = _error_decoder.decode(body).error
        except msgspec.DecodeError:
            pass
        else:
            if isinstance(error, str) and error[:1] == "{":
                # Ollama relays its llama-server runner's error body verbatim: {"error":{"message":...}}.
                return _error_message(error.encode())
            if isinstance(error, dict) and isinstance(message := error.get("message"), str):
                return message
            return error if isinstance(error, str) else str(error)
    return body.decode("utf-8", "replace").strip()[:500]


def _reader_of(response: httpx.Response) -> Callable[[], Awaitable[bytes]]:
    """What reads the next bytes of a body: aiohttp's buffer when the body is ours, else (respx in
    the tests) httpx's generic iterator."""
    body = response.stream
    if isinstance(body, AiohttpBody):
        return body.read_some
    chunks = response.aiter_bytes()

    async def read_some() -> bytes:
        return await anext(chunks, b"")

    return read_some


class _LineStream:
    """NDJSON lines off an httpx response, decoded a received chunk at a time.

    Lines that arrive together are decoded and handed on together: relaying a batch costs one
    write instead of one per token, which keeps per-token CPU flat however fast Ollama is.
    """

    def __init__(self, response: httpx.Response, idle_timeout: float, total_timeout: float | None = None) -> None:
        self.response = response
        self.idle_timeout = idle_timeout
        self.total_timeout = total_timeout
        self._clock = asyncio.get_running_loop().time
        self._deadline = None if total_timeout is None else self._clock() + total_timeout
        self._read_some = _reader_of(response)
        self._buffer = b""
        self._closed = False

    async def _next_lines(self) -> bytes | None:
        """Return the next run of complete lines, or ``None`` at the end of the body."""
        while True:
            wait, whole = self.idle_timeout, False
            if self._deadline is not None and self._deadline - self._clock() < wait:
                wait, whole = max(self._deadline - self._clock(), 0.0), True
            try:
                async with asyncio.timeout(wait):
                    data = await self._read_some()
            except TimeoutError:
                if whole:
                    raise OllamaTimeoutError(
                        f"the answer took longer than {self.total_timeout:g} s (MINATO_REQUEST_TIMEOUT)"
                    ) from None
                raise OllamaTimeoutError(
                    f"Ollama went silent for {self.idle_timeout:g} s in the middle of a stream"
                ) from None
            except httpx.HTTPError as exc:
                url = _ollama_url_of(self.response)
                _log_library_error("ollama_stream_broke", exc, url)
                raise UpstreamError(f"the stream from Ollama at {url} broke off before it was complete") from None
            if not data:
                rest, self._buffer = self._buffer.strip(), b""
                return rest or None
            end = data.rfind(b"\n")
            if end < 0:
                self._buffer += data
                continue
            lines = self._buffer + data[: end + 1] if self._buffer else data[: end + 1]
            self._buffer = data[end + 1 :]
            return lines

    async def aclose(self) -> None:
        """Close the upstream response; Ollama stops generating when its client goes away."""
        if not self._closed:
            self._closed = True
            await self.response.aclose()


class ChunkStream(_LineStream):
    """A primed ``/api/chat`` stream yielding batches of chunks."""

    first: list[ChatChunk]

    async def prime(self) -> None:
        """Read up to the first batch of chunks; raise if Ollama failed before any token."""
        self.first = await self._read_batch() or []
        if not self.first:
            raise UpstreamError("Ollama closed the stream before sending anything")
        if self.first[0].error:
            raise UpstreamError(f"Ollama failed: {self.first[0].error}")

    async def _read_batch(self) -> list[ChatChunk] | None:
        lines = await self._next_lines()
        if lines is None:
            return None
        try:
            return _chunk_decoder.decode_lines(lines)
        except msgspec.DecodeError as exc:
            raise _unreadable_line(exc, self.response) from None

    async def batches(self) -> AsyncIterator[list[ChatChunk]]:
        """Yield the primed batch, then each further batch; an ``error`` line raises.

        Chunks before an error line in the same batch are yielded first, so nothing is lost.
        """
        batch: list[ChatChunk] | None = self.first
        while batch is not None:
            for index, chunk in enumerate(batch):
                if chunk.error:
                    if index:
                        yield batch[:index]
                    raise UpstreamError(f"Ollama failed mid-stream: {chunk.error}")
            yield batch
            if batch and batch[-1].done:
                return
            batch = await self._read_batch()
        raise UpstreamError("Ollama closed the stream before it was done")


def _unreadable_line(exc: msgspec.DecodeError, response: httpx.Response) -> UpstreamError:
    """Minato's sentence for a line of Ollama's stream it cannot decode; msgspec's text goes to the log."""
    _log_library_error("ollama_line_unreadable", exc, _ollama_url_of(response))
    if isinstance(exc, msgspec.ValidationError):
        return UpstreamError("Ollama sent a line that does not have the shape of Ollama's API")
    return UpstreamError("Ollama sent a line that is not valid JSON")


class PullStream(_LineStream):
    """A primed ``/api/pull`` stream yielding progress lines."""

    first: list[PullProgress]

    async def prime(self) -> None:
        """Read past "pulling manifest"; an error before any layer means an unknown model."""
        self.first = []
        while True:
            lines = await self._next_lines()
            if lines is None:
                raise UpstreamError("Ollama closed the pull stream before reporting progress")
            batch = _decode_progress(lines, self.response)
            self.first.extend(batch)
            for item in batch:
                if item.error:
                    raise _pull_error(item.error)
                if item.status != _MANIFEST_STATUS:
                    return

    async def progress(self) -> AsyncIterator[list[PullProgress]]:
        """Yield the primed lines, then each further batch; an ``error`` line raises."""
        batch: list[PullProgress] | None = self.first
        while batch is not None:
            for index, item in enumerate(batch):
                if item.error:
                    if index:
                        yield batch[:index]
                    raise UpstreamError(f"pull failed: {item.error}")
            yield batch
            if batch and batch[-1].status == "success":
                return
            lines = await self._next_lines()
            batch = None if lines is None else _decode_progress(lines, self.response)
        raise UpstreamError("Ollama closed the pull stream before it succeeded")


def _decode_progress(lines: bytes, response: httpx.Response) -> list[PullProgress]:
    try:
        return _progress_decoder.decode_lines(lines)
    except msgspec.DecodeError as exc:
        raise _unreadable_line(exc, response) from None


def _pull_error(message: str) -> MinatoError:
    # Ollama turns a registry 404 into os.ErrNotExist: "pull model manifest: file does not exist".
    if "file does not exist" in message or "not found" in message:
        return ModelNotFoundError(message)
    return UpstreamError(f"pull failed: {message}")
