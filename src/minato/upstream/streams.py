"""Ollama's answers as they arrive: chat and pull streams, and forwarded answers relayed as bytes.

Apart from the client because reading an answer is a different job from asking: the client sends
requests and decides the deadlines; these readers hold the open response, bound every silence in
it, and turn what breaks mid-way into :mod:`minato.errors` exceptions. Chat and pull streams are
*primed*: their first batch is read before the caller commits to a ``200``, so failures that
happen before the first token still get an honest status.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import ClassVar, Final, Generic, Protocol, TypeVar

import httpx
import msgspec

from minato.errors import (
    MinatoError,
    ModelNotFoundError,
    OllamaConnectionLostError,
    OllamaTimeoutError,
    UpstreamError,
)
from minato.ollama.wire import ChatChunk, PullProgress
from minato.upstream.failures import log_library_error
from minato.upstream.transport import AiohttpBody

T = TypeVar("T", ChatChunk, PullProgress)
_MANIFEST_STATUS: Final = "pulling manifest"
_chunk_decoder: Final = msgspec.json.Decoder(ChatChunk)
_progress_decoder: Final = msgspec.json.Decoder(PullProgress)


class _Body:
    """The body of one Ollama answer as it arrives, no silence in it longer than the idle timeout.

    The one read loop of every reader: :class:`RawResponse` hands each piece on as it came, the
    line streams split the pieces into NDJSON lines.
    """

    #: What Minato's sentences call the body (with an indefinite article, and with a definite one).
    _called: ClassVar[tuple[str, str]] = ("a stream", "the stream")

    def __init__(
        self,
        read_some: Callable[[], Awaitable[bytes]],
        close: Callable[[], Awaitable[None]],
        ollama_url: str,
        idle_timeout: float,
        total_timeout: float | None = None,
    ) -> None:
        self.ollama_url = ollama_url
        self.idle_timeout = idle_timeout
        self.total_timeout = total_timeout
        self._loop = asyncio.get_running_loop()
        self._deadline = None if total_timeout is None else self._loop.time() + total_timeout
        self._read_some = read_some
        self._close = close
        # The watchdog (see _read): when the read in progress began, who to cancel, one timer.
        self._reading_since: float | None = None
        self._reader: asyncio.Task[object] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expired: str | None = None
        self._closed = False
        #: The backend (``host:port``) answering, and what to tell when the answer is closed (a pool's
        #: count of generations in flight on that backend).
        self.backend = ""
        self.on_close: Callable[[], None] | None = None

    async def _read(self) -> bytes:
        """The next bytes that arrived, or ``b""`` at the end; a failure raises a Minato error.

        Each read is bounded by the idle timeout (and the whole body by its total timeout) with one
        timer per body that re-arms itself only when it fires, instead of a timeout context per
        read: a paced stream makes one read per token, and arming and disarming a timer for each
        cost more than the rest of the read.
        """
        self._reading_since = self._loop.time()
        self._reader = asyncio.current_task()  # priming and relaying may read in different tasks
        if self._timer is None:
            self._timer = self._loop.call_at(self._due(), self._check)
        try:
            return await self._read_some()
        except asyncio.CancelledError:
            expired = self._expired
            if expired is None:
                raise
            self._expired = None
            if self._reader is not None:
                self._reader.uncancel()  # the watchdog's own cancellation ends here, as a timeout
            if expired == "whole":
                raise OllamaTimeoutError(
                    f"the answer took longer than {self.total_timeout:g} s (MINATO_REQUEST_TIMEOUT)"
                ) from None
            raise OllamaTimeoutError(
                f"Ollama went silent for {self.idle_timeout:g} s in the middle of {self._called[0]}"
            ) from None
        except httpx.HTTPError as exc:
            log_library_error("ollama_stream_broke", exc, self.ollama_url)
            # A lost connection: a pool may ask the next backend while nothing reached the client yet.
            raise OllamaConnectionLostError(
                f"{self._called[1]} from Ollama at {self.ollama_url} broke off before it was complete"
            ) from None
        finally:
            self._reading_since = None

    def _due(self) -> float:
        """When the read in progress times out."""
        since = self._reading_since if self._reading_since is not None else self._loop.time()
        due = since + self.idle_timeout
        return due if self._deadline is None else min(due, self._deadline)

    def _check(self) -> None:
        """The watchdog's timer: cancel a read that is overdue, else wait until the current one would be."""
        self._timer = None
        if self._reading_since is None or self._reader is None:
            return  # no read in progress: the next one arms the timer again
        now = self._loop.time()
        if self._deadline is not None and now >= self._deadline:
            self._expired = "whole"
        elif now >= self._reading_since + self.idle_timeout:
            self._expired = "idle"
        else:
            self._timer = self._loop.call_at(self._due(), self._check)
            return
        self._reader.cancel()

    async def aclose(self) -> None:
        """Close the upstream response; Ollama stops working on a request whose client went away."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._closed:
            self._closed = True
            if self.on_close is not None:
                self.on_close()
            await self._close()


def _reader_of(response: httpx.Response) -> Callable[[], Awaitable[bytes]]:
    """What reads the next bytes of a body: aiohttp's buffer when the body is ours, else (respx in
    the tests) httpx's generic iterator."""
    body = response.stream
    if isinstance(body, AiohttpBody):
        return body.read_some
    return _reader_of_chunks(response.aiter_bytes())


def _reader_of_chunks(chunks: AsyncIterator[bytes]) -> Callable[[], Awaitable[bytes]]:
    async def read_some() -> bytes:
        return await anext(chunks, b"")

    return read_some


async def _once(content: bytes) -> AsyncGenerator[bytes, None]:
    yield content


class RawResponse(_Body):
    """Ollama's answer to a forwarded request: status and headers now, the body as it arrives.

    Built from what HTTP says (status, headers, the body's bytes as they come), so an answer Minato
    makes itself (a pool's merged list or progress, a replayed body) needs no HTTP library's objects.
    """

    _called = ("an answer", "the answer")

    # Set by the two ways an answer comes to be (:meth:`of`, :meth:`made`), right after its body.
    status: int
    headers: list[tuple[str, str]]
    """Names in lower case."""

    @classmethod
    def of(
        cls, response: httpx.Response, ollama_url: str, idle_timeout: float, total_timeout: float | None = None
    ) -> RawResponse:
        """Ollama's answer as the transport gave it."""
        answer = cls(_reader_of(response), response.aclose, ollama_url, idle_timeout, total_timeout)
        answer.status = response.status_code
        answer.headers = [(name.lower(), value) for name, value in response.headers.items()]
        return answer

    @classmethod
    def made(
        cls,
        status: int,
        content_type: str,
        body: AsyncGenerator[bytes, None] | bytes,
        ollama_url: str,
        idle_timeout: float,
    ) -> RawResponse:
        """An answer Minato made: ``body`` whole, or as an async generator (closed with the answer, which
        stops whatever it reads)."""
        chunks = _once(body) if isinstance(body, bytes) else body
        answer = cls(_reader_of_chunks(chunks), chunks.aclose, ollama_url, idle_timeout)
        answer.status = status
        answer.headers = [("content-type", content_type)]
        return answer

    @property
    def content_type(self) -> str:
        """Ollama's ``Content-Type`` (empty when it sent none)."""
        return next((value for name, value in self.headers if name == "content-type"), "")

    async def chunks(self) -> AsyncIterator[bytes]:
        """Each piece of the body the moment it arrives; a failure mid-way raises a Minato error."""
        try:
            while data := await self._read():
                yield data
        finally:
            await self.aclose()

    async def read(self) -> bytes:
        """The whole body."""
        return b"".join([chunk async for chunk in self.chunks()])


class _LineStream(_Body, abc.ABC, Generic[T]):
    """NDJSON lines off an httpx response, decoded a received chunk at a time.

    Lines that arrive together are decoded and handed on together: relaying a batch costs one
    write instead of one per token, which keeps per-token CPU flat however fast Ollama is.
    """

    first: list[T]
    _decoder: msgspec.json.Decoder[T]
    #: What priming waits for, in Minato's sentence when it does not come.
    _primes_on: ClassVar[str]

    def __init__(
        self, response: httpx.Response, ollama_url: str, idle_timeout: float, total_timeout: float | None = None
    ) -> None:
        super().__init__(_reader_of(response), response.aclose, ollama_url, idle_timeout, total_timeout)
        self.response = response
        self._buffer = b""

    async def prime(self, deadline: float, budget: float) -> None:
        """Read the first batch by the loop-time ``deadline`` (``budget`` seconds from the request);
        close the response if that fails."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._prime()
        except TimeoutError:
            await self.aclose()
            raise OllamaTimeoutError(f"Ollama did not send {self._primes_on} within {budget:g} s") from None
        except BaseException:
            await self.aclose()
            raise

    @abc.abstractmethod
    async def _prime(self) -> None:
        """Read up to the first batch the caller commits on; raise if Ollama failed before it."""

    @abc.abstractmethod
    def _is_last(self, item: T) -> bool:
        """Whether ``item`` is the stream's last line."""

    async def _next_lines(self) -> bytes | None:
        """Return the next run of complete lines, or ``None`` at the end of the body."""
        while True:
            data = await self._read()
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

    async def _next_batch(self) -> list[T] | None:
        """Return the next run of decoded lines, or ``None`` at the end of the body."""
        lines = await self._next_lines()
        if lines is None:
            return None
        try:
            return self._decoder.decode_lines(lines)
        except msgspec.DecodeError as exc:
            raise _unreadable_line(exc, self.ollama_url) from None

    async def _batches(self, failed: str, cut_short: str) -> AsyncIterator[list[T]]:
        """Yield the primed batch, then each further batch up to the last line; an ``error`` line
        raises ``failed`` (its error in place of ``{}``), an end before the last line ``cut_short``.

        Lines before an error line in the same batch are yielded first, so nothing is lost.
        """
        batch: list[T] | None = self.first
        while batch is not None:
            for index, item in enumerate(batch):
                if item.error:
                    if index:
                        yield batch[:index]
                    raise UpstreamError(failed.format(item.error))
            yield batch
            if batch and self._is_last(batch[-1]):
                return
            batch = await self._next_batch()
        raise UpstreamError(cut_short)


def _unreadable_line(exc: msgspec.DecodeError, ollama_url: str) -> UpstreamError:
    """Minato's sentence for a line of Ollama's stream it cannot decode; msgspec's text goes to the log."""
    log_library_error("ollama_line_unreadable", exc, ollama_url)
    if isinstance(exc, msgspec.ValidationError):
        return UpstreamError("Ollama sent a line that does not have the shape of Ollama's API")
    return UpstreamError("Ollama sent a line that is not valid JSON")


class ChunkStream(_LineStream[ChatChunk]):
    """A primed ``/api/chat`` stream yielding batches of chunks."""

    _decoder = _chunk_decoder
    _primes_on = "a first token"

    async def _prime(self) -> None:
        """Read up to the first batch of chunks; raise if Ollama failed before any token."""
        self.first = await self._next_batch() or []
        if not self.first:
            raise UpstreamError("Ollama closed the stream before sending anything")
        if self.first[0].error:
            raise UpstreamError(f"Ollama failed: {self.first[0].error}")

    def _is_last(self, item: ChatChunk) -> bool:
        return item.done

    def batches(self) -> AsyncIterator[list[ChatChunk]]:
        """Yield the primed batch, then each further batch; an ``error`` line raises.

        Chunks before an error line in the same batch are yielded first, so nothing is lost.
        """
        return self._batches("Ollama failed mid-stream: {}", "Ollama closed the stream before it was done")


class PullStream(_LineStream[PullProgress]):
    """A primed ``/api/pull`` stream yielding progress lines."""

    _decoder = _progress_decoder
    _primes_on = "pull progress"

    async def _prime(self) -> None:
        """Read past "pulling manifest"; an error before any layer means an unknown model."""
        self.first = []
        while True:
            batch = await self._next_batch()
            if batch is None:
                raise UpstreamError("Ollama closed the pull stream before reporting progress")
            self.first.extend(batch)
            for item in batch:
                if item.error:
                    raise _pull_error(item.error)
                if item.status != _MANIFEST_STATUS:
                    return

    def _is_last(self, item: PullProgress) -> bool:
        return item.status == "success"

    def progress(self) -> AsyncIterator[list[PullProgress]]:
        """Yield the primed lines, then each further batch; an ``error`` line raises."""
        return self._batches("pull failed: {}", "Ollama closed the pull stream before it succeeded")


def _pull_error(message: str) -> MinatoError:
    # Ollama turns a registry 404 into os.ErrNotExist: "pull model manifest: file does not exist".
    if "file does not exist" in message or "not found" in message:
        return ModelNotFoundError(message)
    return UpstreamError(f"pull failed: {message}")


class PullProgressStream(Protocol):
    """What reads a pull's progress: one backend's :class:`PullStream`, or a pool's merge of several."""

    def progress(self) -> AsyncIterator[list[PullProgress]]:
        """Yield batches of progress lines up to success; an ``error`` line raises."""
        ...

    async def aclose(self) -> None:
        """Stop reading (and pulling, if it is not done)."""
        ...
