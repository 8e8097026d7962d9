"""One request and its answer on a keep-alive connection: the status and headers, then the body either
pulled (:meth:`Exchange.read_some`) or pushed to a :class:`~minato.upstream.sink.Sink` from the
connection's data callback (the :class:`~minato.upstream.sink.Source` protocol).

The exchange is httptools' callback object: per chunk the push path is ``data_received`` ->
``feed_data`` -> :meth:`Exchange.on_body` -> ``sink.data``, with no task, future or await. The deadlines
(the headers within ``headers_within``, no silence longer than the idle timeout, the whole body within
its bound) share ONE timer per exchange, re-armed only when it fires: each chunk notes the loop time,
and the timer compares when it fires.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from minato.errors import MinatoError, OllamaConnectionLostError, OllamaTimeoutError
from minato.upstream.failures import log_library_error, lost_before_answer

if TYPE_CHECKING:
    from minato.upstream.engine.protocol import Connection
    from minato.upstream.sink import Sink

#: Bytes a pulled body may hold unread before the socket stops being read (Ollama's send buffer then
#: fills instead of Minato's memory); reading resumes once the reader took them.
PULL_HIGH_WATER: Final = 256 * 1024


class StaleConnectionError(Exception):
    """A reused keep-alive connection closed before any byte of the answer: Ollama had dropped it while
    it was idle. The request is sent again once, on a fresh connection."""


class Exchange:
    """One HTTP/1.1 request and its answer (see the module's description)."""

    __slots__ = (
        "_buffer",
        "_buffered",
        "_complete",
        "_conn",
        "_error",
        "_flow_paused",
        "_head_only",
        "_headers",
        "_headers_by",
        "_last",
        "_loop",
        "_paused",
        "_sink",
        "_time",
        "_timer",
        "_until_close",
        "_waiter",
        "_whole_by",
        "called",
        "closed",
        "headers",
        "idle_timeout",
        "late",
        "ollama_url",
        "received",
        "status",
        "whole_within",
    )

    def __init__(
        self,
        conn: Connection,
        ollama_url: str,
        started: float,
        *,
        headers_within: float,
        late: str,
        idle_timeout: float,
        whole_within: float | None,
        head_only: bool = False,
    ) -> None:
        loop = conn.loop
        self._loop = loop
        self._time = loop.time
        self._conn: Connection | None = conn
        self.ollama_url = ollama_url
        self.idle_timeout = idle_timeout
        self.whole_within = whole_within
        self.late = late
        """Minato's sentence when the headers do not come within ``headers_within``."""
        #: What Minato's sentences call the body (with an indefinite article, and with a definite one).
        self.called = ("an answer", "the answer")
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        """The answer's headers, names in lower case."""
        self.received = False
        """Whether any byte of the answer arrived."""
        self.closed = False
        self._headers: asyncio.Future[None] = loop.create_future()
        self._headers_by = started + headers_within
        self._whole_by = None if whole_within is None else started + whole_within
        self._last = started
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._sink: Sink | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._error: MinatoError | None = None
        self._complete = False
        self._until_close = False
        self._paused = False
        self._flow_paused = False
        self._head_only = head_only
        """The request was a ``HEAD``: its answer ends with its headers, whatever length they announce
        (the parser cannot know what it answers, and would wait for that many bytes)."""
        self._timer: asyncio.TimerHandle | None = loop.call_at(self._due(), self._check)

    # -- the headers ---------------------------------------------------------------------------

    async def answered(self) -> None:
        """Wait for the status and headers; raise Minato's error (or :class:`StaleConnectionError`)."""
        try:
            await self._headers
        except BaseException:
            self.close()
            raise

    def on_header(self, name: bytes, value: bytes) -> None:
        """httptools: one header of the answer."""
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        """httptools: the status and every header arrived."""
        conn = self._conn
        if conn is None or self.closed:
            return
        self.status = status = conn.parser.get_status_code()
        self._last = self._time()
        if status >= 200 and status not in (204, 304):
            names = [name for name, _ in self.headers]
            self._until_close = "content-length" not in names and "transfer-encoding" not in names
        if not self._headers.done():
            self._headers.set_result(None)
        if self._head_only:
            # The next bytes on this connection answer the next request, read by a parser of its own.
            self._finish(conn, keep=conn.parser.should_keep_alive())
            return
        self._rearm()

    # -- the body ------------------------------------------------------------------------------

    def on_body(self, body: bytes) -> None:
        """httptools: a piece of the body, handed on at once (or kept for :meth:`read_some`)."""
        if self.closed:
            return
        self._last = self._time()
        sink = self._sink
        if sink is not None:
            sink.data(body)
            return
        self._buffer.append(body)
        self._buffered += len(body)
        if self._buffered > PULL_HIGH_WATER and not self._flow_paused:
            self._flow_paused = True
            self._pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        """httptools: the body is complete; the connection goes back to its pool (or is closed)."""
        conn = self._conn
        if conn is None or self.closed:
            return
        self._finish(conn, keep=conn.parser.should_keep_alive() and not self._until_close)

    def _finish(self, conn: Connection, *, keep: bool) -> None:
        self._complete = True
        self._conn = None
        self._disarm()
        conn.finished(keep=keep)
        sink = self._sink
        if sink is not None:
            self.closed = True  # nothing follows the end
            sink.end()
            return
        self._wake()

    def lost(self, exc: BaseException | None) -> None:
        """The connection closed (``exc``: why, if it broke) while this exchange held it."""
        conn = self._conn
        if conn is None or self._complete:
            return
        if self._until_close and exc is None and self._headers.done():
            self._finish(conn, keep=False)  # a body delimited by the end of the connection
            return
        self._conn = None
        if not self._headers.done():
            if conn.reused and not self.received:
                self._disarm()
                self._headers.set_exception(StaleConnectionError())
                return
            self._fail(lost_before_answer(exc, self.ollama_url))
            return
        cause = exc or EOFError("the connection closed before the body was complete")
        log_library_error("ollama_stream_broke", cause, self.ollama_url)
        # A lost connection: a pool may ask the next backend while nothing reached the client yet.
        broke = f"{self.called[1]} from Ollama at {self.ollama_url} broke off before it was complete"
        self._fail(OllamaConnectionLostError(broke))

    def broken(self, exc: BaseException) -> None:
        """What Ollama sent is not HTTP Minato can read (or the sink raised): the connection is closed."""
        conn = self._conn
        if conn is not None:
            conn.transport.close()
        self.lost(exc if isinstance(exc, OSError) else _UnreadableError(str(exc) or type(exc).__name__))

    def _fail(self, error: MinatoError) -> None:
        self._disarm()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.transport.close()  # whatever it was doing, this exchange is over: Ollama stops
        if self.closed:
            return
        if not self._headers.done():
            self._headers.set_exception(error)
            self._headers.exception()  # retrieved: nobody may be waiting any more
        self._error = error
        sink = self._sink
        if sink is not None:
            self.closed = True
            sink.fail(error)
            return
        self._wake()

    async def read_some(self) -> bytes:
        """The bytes that arrived (waiting for some), or ``b""`` at the end; a failure raises Minato's error."""
        while True:
            buffer = self._buffer
            if buffer:
                data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
                buffer.clear()
                self._buffered = 0
                if self._flow_paused:
                    self._flow_resumed()
                return data
            if self._error is not None:
                raise self._error
            if self._complete or self.closed:
                return b""
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    async def read(self) -> bytes:
        """The whole body."""
        pieces = []
        while data := await self.read_some():
            pieces.append(data)
        return b"".join(pieces)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the Source protocol -------------------------------------------------------------------

    def attach(self, sink: Sink) -> None:
        """Hand every further piece of the body to ``sink`` (see :meth:`minato.upstream.sink.Source.attach`)."""
        if self.closed:
            return
        buffer, self._buffer, self._buffered = self._buffer, [], 0
        self._sink = sink
        for piece in buffer:
            sink.data(piece)
            if self._sink is not sink:  # the sink closed the exchange
                return
        if self._error is not None:
            self.closed = True
            sink.fail(self._error)
        elif self._complete:
            self.closed = True
            sink.end()
        elif self._flow_paused:
            self._flow_resumed()

    def pause(self) -> None:
        """Stop reading Ollama's socket; the idle timeout does not run while paused."""
        if not self._paused:
            self._paused = True
            if not self._flow_paused:
                self._pause_reading()

    def resume(self) -> None:
        """Read Ollama's socket again; the idle gap is counted from now."""
        if self._paused:
            self._paused = False
            self._last = self._time()
            if not self._flow_paused:
                self._resume_reading()
            if self._timer is None and self._conn is not None:
                self._rearm()

    def close(self) -> None:
        """End the exchange now: an incomplete body closes the connection (Ollama stops generating), a
        complete one has gone back to its pool already. No sink call follows; twice does nothing."""
        if self.closed:
            return
        self.closed = True
        self._sink = None
        self._disarm()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.transport.close()
        self._wake()

    def _flow_resumed(self) -> None:
        """The reader took what was buffered: read the socket again (unless paused); idle counts from now."""
        self._flow_paused = False
        self._last = self._time()
        if not self._paused:
            self._resume_reading()
            if self._timer is None and self._conn is not None:
                self._rearm()

    def _pause_reading(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.transport.pause_reading()

    def _resume_reading(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.transport.resume_reading()

    # -- the deadlines -------------------------------------------------------------------------

    def _due(self) -> float:
        """When the current phase times out (the loop time)."""
        due = self._last + self.idle_timeout if self._headers.done() else self._headers_by
        whole = self._whole_by
        return due if whole is None or whole > due else whole

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(self._due(), self._check)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        """The exchange's one timer: expire what is overdue, else wait until it would be."""
        self._timer = None
        if self._conn is None or self.closed:
            return
        now = self._time()
        whole = self._whole_by
        if not self._headers.done() and now >= self._headers_by and (whole is None or self._headers_by <= whole):
            self._fail(OllamaTimeoutError(self.late))
        elif whole is not None and now >= whole:
            self._fail(
                OllamaTimeoutError(f"the answer took longer than {self.whole_within:g} s (MINATO_REQUEST_TIMEOUT)")
            )
        elif not self._headers.done():
            self._timer = self._loop.call_at(self._due(), self._check)
        elif self._paused or self._flow_paused:
            if whole is not None:  # only the whole bound runs while paused; resuming re-arms the idle one
                self._timer = self._loop.call_at(whole, self._check)
        elif now >= self._last + self.idle_timeout:
            self._fail(
                OllamaTimeoutError(f"Ollama went silent for {self.idle_timeout:g} s in the middle of {self.called[0]}")
            )
        else:
            self._timer = self._loop.call_at(self._due(), self._check)


class _UnreadableError(Exception):
    """What the parser (or a sink) raised, for the log."""
