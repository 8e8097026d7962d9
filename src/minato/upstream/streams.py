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
from typing import TYPE_CHECKING, ClassVar, Final, Generic, Protocol, TypeVar

import msgspec

from minato.errors import MinatoError, ModelNotFoundError, OllamaTimeoutError, UpstreamError
from minato.ollama.wire import ChatChunk, PullProgress
from minato.upstream.failures import log_library_error

if TYPE_CHECKING:
    from minato.upstream.engine.exchange import Exchange
    from minato.upstream.sink import Source

T = TypeVar("T", ChatChunk, PullProgress)
_MANIFEST_STATUS: Final = "pulling manifest"
_chunk_decoder: Final = msgspec.json.Decoder(ChatChunk)
_progress_decoder: Final = msgspec.json.Decoder(PullProgress)


class _Body:
    """The body of one Ollama answer as it arrives: an engine exchange's, or one Minato made.

    The one reader of every body: :class:`RawResponse` hands each piece on as it came, the line
    streams split the pieces into NDJSON lines. The deadlines (no silence longer than the idle timeout,
    the whole body within its bound) are the exchange's own, one timer per exchange.
    """

    #: What Minato's sentences call the body (with an indefinite article, and with a definite one).
    _called: ClassVar[tuple[str, str]] = ("a stream", "the stream")

    def __init__(
        self,
        exchange: Exchange | None,
        ollama_url: str,
        idle_timeout: float,
        made: AsyncGenerator[bytes, None] | None = None,
    ) -> None:
        self.ollama_url = ollama_url
        self.idle_timeout = idle_timeout
        self._exchange = exchange
        self._made = made
        self._read: Callable[[], Awaitable[bytes]]
        if exchange is not None:
            exchange.called = self._called
            self._read = exchange.read_some
        else:
            self._read = _reader_of(made or _once(b""))
        self._closed = False
        #: The backend (``host:port``) answering, and what to tell when the answer is closed (a pool's
        #: count of generations in flight on that backend).
        self.backend = ""
        self.on_close: Callable[[], None] | None = None

    @property
    def source(self) -> Source | None:
        """The body as a :class:`~minato.upstream.sink.Source`, for a relay that writes each piece from
        the connection's data callback (``None`` for an answer Minato made itself, which is read with
        the async methods). Once attached, the body is read no other way; :meth:`close` still ends it."""
        return self._exchange

    def close(self) -> None:
        """Close the upstream answer without awaiting: Ollama stops working on a request whose client
        went away (an answer Minato made is closed by :meth:`aclose`). ``on_close`` runs once."""
        if self._closed:
            return
        self._closed = True
        if self._exchange is not None:
            self._exchange.close()
        if self.on_close is not None:
            self.on_close()

    async def aclose(self) -> None:
        """Close the upstream answer (see :meth:`close`), and what a made answer reads."""
        was_closed = self._closed
        self.close()
        if self._made is not None and not was_closed:
            await self._made.aclose()


def _reader_of(chunks: AsyncGenerator[bytes, None]) -> Callable[[], Awaitable[bytes]]:
    async def read_some() -> bytes:
        return await anext(chunks, b"")

    return read_some


async def _once(content: bytes) -> AsyncGenerator[bytes, None]:
    yield content


class RawResponse(_Body):
    """Ollama's answer to a forwarded request: status and headers now, the body as it arrives.

    Built from what HTTP says (status, headers, the body's bytes as they come), so an answer Minato
    makes itself (a pool's merged list or progress, a replayed body) is one too (:meth:`made`).

    For the web layer's relays: :attr:`source` is the body as a :class:`~minato.upstream.sink.Source`
    (each piece handed to a sink from the data callback; ``None`` for a made answer, read with
    :meth:`chunks`), and :meth:`close` ends it without awaiting (``on_close`` runs once).
    """

    _called = ("an answer", "the answer")

    status: int
    headers: list[tuple[str, str]]
    """Names in lower case."""

    @classmethod
    def of(cls, exchange: Exchange, idle_timeout: float) -> RawResponse:
        """Ollama's answer, as the engine received its status and headers."""
        answer = cls(exchange, exchange.ollama_url, idle_timeout)
        answer.status = exchange.status
        answer.headers = exchange.headers
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
        answer = cls(None, ollama_url, idle_timeout, chunks)
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
    """NDJSON lines off an Ollama answer, decoded a received chunk at a time.

    Lines that arrive together are decoded and handed on together: relaying a batch costs one
    write instead of one per token, which keeps per-token CPU flat however fast Ollama is.
    """

    first: list[T]
    _decoder: msgspec.json.Decoder[T]
    #: What priming waits for, in Minato's sentence when it does not come.
    _primes_on: ClassVar[str]

    def __init__(self, exchange: Exchange, idle_timeout: float) -> None:
        super().__init__(exchange, exchange.ollama_url, idle_timeout)
        self._buffer = b""

    def take_rest(self) -> bytes:
        """The bytes received past the last complete line, taken: a relay that attaches to
        :attr:`source` after :attr:`first` splits lines itself, starting with these."""
        rest, self._buffer = self._buffer, b""
        return rest

    async def prime(self, deadline: float, budget: float) -> None:
        """Read the first batch by the loop-time ``deadline`` (``budget`` seconds from the request);
        close the response if that fails."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._prime()
        except TimeoutError:
            self.close()
            raise OllamaTimeoutError(f"Ollama did not send {self._primes_on} within {budget:g} s") from None
        except BaseException:
            self.close()
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
    """A primed ``/api/chat`` stream yielding batches of chunks.

    For the web layer's relays: :attr:`first` is the primed batch (decoded), :meth:`take_rest` the
    bytes received past its last complete line, and :attr:`source` the rest of the body as a
    :class:`~minato.upstream.sink.Source` (each piece handed to a sink from the data callback);
    :meth:`close` ends it without awaiting (``on_close`` runs once).
    """

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
