"""How an Ollama body is relayed without a task per chunk: a :class:`Source` hands each chunk to a
:class:`Sink` from the upstream connection's data callback.

This is the seam between the relay engine (:mod:`minato.upstream.engine`), which owns Ollama's
socket, and whoever turns Ollama's bytes into the client's (the web layer's relays, which write to
the client's socket from the same callback). Nothing here awaits: a token costs a parser callback,
a transform and one write, as in a C proxy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from minato.errors import MinatoError


class Sink(Protocol):
    """What receives a body from its :class:`Source`, called on the event loop's thread, never awaited."""

    def data(self, chunk: bytes) -> None:
        """One piece of the body, the moment it arrived (never empty)."""

    def end(self) -> None:
        """The body is complete (called once, after the last :meth:`data`)."""

    def fail(self, error: MinatoError) -> None:
        """The body cannot complete: Ollama went silent past the idle timeout, the whole answer took
        longer than its bound, or the connection broke (called once, instead of :meth:`end`)."""


class Source(Protocol):
    """An Ollama body that can be relayed from its data callback (see :class:`Sink`)."""

    def attach(self, sink: Sink) -> None:
        """Hand every further piece of the body to ``sink``: what already arrived unread at once,
        inside this call, then each piece from the connection's data callback, then exactly one of
        :meth:`Sink.end` or :meth:`Sink.fail`. Once attached the body is not read any other way."""

    def pause(self) -> None:
        """Stop reading Ollama's socket (its send buffer fills and Ollama waits): the client reads slower
        than Ollama writes. The idle timeout does not run while paused; the whole-answer bound does."""

    def resume(self) -> None:
        """Read Ollama's socket again."""

    def close(self) -> None:
        """End the exchange now, without awaiting: a body not yet complete closes the connection (so
        Ollama stops generating), a complete one returns it to its pool. No sink call follows.
        Closing twice does nothing."""


__all__ = ["Sink", "Source"]
