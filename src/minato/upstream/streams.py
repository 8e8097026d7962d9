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
from typing import TYPE_CHECKING, ClassVar, Final, Generic, Protocol

import msgspec

from minato.errors import MinatoError, ModelNotFoundError, OllamaTimeoutError, UpstreamError
from minato.ollama.wire import ChatChunk, PullProgress
from minato.upstream.lines import LineReader, T

if TYPE_CHECKING:
    from minato.upstream.engine.exchange import Exchange
    from minato.upstream.sink import Source

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
    """NDJSON lines off an Ollama answer, read by its :class:`~minato.upstream.lines.LineReader`.

    Awaited here (priming, and the batches of a stream read to its end); a relay from the data
    callback (:attr:`source`) goes on feeding the same reader, which holds the bytes received past
    the last complete line.
    """

    first: list[T]
    _decoder: msgspec.json.Decoder[T]
    #: What priming waits for, in Minato's sentence when it does not come.
    _primes_on: ClassVar[str]
    #: Minato's sentences for an ``error`` line mid-way (Ollama's error in place of ``{}``) and for a
    #: body that ends before the last line.
    _failed: ClassVar[str]
    _cut_short: ClassVar[str]

    def __init__(self, exchange: Exchange, idle_timeout: float) -> None:
        super().__init__(exchange, exchange.ollama_url, idle_timeout)
        self.lines: LineReader[T] = self.reader(exchange.ollama_url)
        """The stream's line reader: what priming read past :attr:`first` is carried in it."""

    @classmethod
    def reader(cls, ollama_url: str) -> LineReader[T]:
        """A line reader with this stream's decoder, sentences and last line."""
        return LineReader(cls._decoder, ollama_url, failed=cls._failed, cut_short=cls._cut_short, is_last=cls._is_last)

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

    @staticmethod
    @abc.abstractmethod
    def _is_last(item: T) -> bool:
        """Whether ``item`` is the stream's last line."""

    async def _next_batch(self) -> list[T]:
        """Read until lines decode (at least one), the reader finds a failure, or the body ends."""
        lines = self.lines
        while True:
            data = await self._read()
            if not data:
                return lines.end()
            batch = lines.feed(data)
            if batch or lines.failure is not None:
                return batch

    async def _batches(self) -> AsyncIterator[list[T]]:
        """Yield the primed batch, then each further batch up to the last line; then raise the
        reader's failure, if it found one (the lines before it were yielded first, so nothing is lost)."""
        lines = self.lines
        batch = self.first
        while True:
            if batch:
                yield batch
            if lines.failure is not None:
                raise lines.failure
            if batch and self._is_last(batch[-1]):
                return
            batch = await self._next_batch()


class ChunkStream(_LineStream[ChatChunk]):
    """A primed ``/api/chat`` stream yielding batches of chunks.

    For the web layer's relays: :attr:`first` is the primed batch (decoded, up to an ``error`` line),
    :attr:`lines` the reader to feed the rest of the body to, and :attr:`source` that rest as a
    :class:`~minato.upstream.sink.Source` (each piece handed to a sink from the data callback);
    :meth:`close` ends it without awaiting (``on_close`` runs once).
    """

    _decoder = _chunk_decoder
    _primes_on = "a first token"
    _failed = "Ollama failed mid-stream: {}"
    _cut_short = "Ollama closed the stream before it was done"

    async def _prime(self) -> None:
        """Read up to the first batch of chunks; raise if Ollama failed before any token."""
        self.first = await self._next_batch()
        if self.first:
            return
        lines = self.lines
        if lines.error is not None:
            raise UpstreamError(f"Ollama failed: {lines.error}")
        if lines.failure is None or lines.cut_short:
            raise UpstreamError("Ollama closed the stream before sending anything")
        raise lines.failure

    @staticmethod
    def _is_last(item: ChatChunk) -> bool:
        return item.done

    def batches(self) -> AsyncIterator[list[ChatChunk]]:
        """Yield the primed batch, then each further batch; an ``error`` line raises.

        Chunks before an error line in the same batch are yielded first, so nothing is lost.
        """
        return self._batches()


class PullStream(_LineStream[PullProgress]):
    """A primed ``/api/pull`` stream yielding progress lines."""

    _decoder = _progress_decoder
    _primes_on = "pull progress"
    _failed = "pull failed: {}"
    _cut_short = "Ollama closed the pull stream before it succeeded"

    async def _prime(self) -> None:
        """Read past "pulling manifest"; an error before any layer means an unknown model."""
        lines = self.lines
        self.first = []
        while True:
            batch = await self._next_batch()
            self.first.extend(batch)
            if any(item.status != _MANIFEST_STATUS for item in batch):
                return
            if lines.error is not None:
                raise _pull_error(lines.error)
            if lines.cut_short:
                raise UpstreamError("Ollama closed the pull stream before reporting progress")
            if lines.failure is not None:
                raise lines.failure

    @staticmethod
    def _is_last(item: PullProgress) -> bool:
        return item.status == "success"

    def progress(self) -> AsyncIterator[list[PullProgress]]:
        """Yield the primed lines, then each further batch; an ``error`` line raises."""
        return self._batches()


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
