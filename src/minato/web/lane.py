"""The lane: writing a response's body to the client's socket now, without an ASGI message.

Minato's server (:mod:`minato.server.lane`) offers each request a lane in its ASGI scope, under the
extension ``minato.lane``. A relay writes each chunk of Ollama's answer to it from the upstream
connection's data callback (no task wakes up, no ``send`` is awaited per token), and hears from it
when the client's socket fills up, drains again or closes. The head still goes out through the
normal ASGI ``send`` (so the request log's layer sees it), and the response still ends with one
``http.response.body`` message (so the server completes its cycle: keep-alive, the log line,
metrics). Without a lane (an in-process test client) a response is sent the ASGI way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

#: The scope extension under which the server puts a request's lane.
LANE_EXTENSION: Final = "minato.lane"


class LaneListener(Protocol):
    """Who hears what happens to the client's socket (one at a time), called on the event loop's thread."""

    def pause(self) -> None:
        """The socket's send buffer passed its high-water mark: stop producing for it."""

    def resume(self) -> None:
        """The buffer is below its low-water mark again."""

    def gone(self) -> None:
        """The client closed its connection (called once)."""


class Lane(Protocol):
    """A request's direct way to its client's socket."""

    def write(self, chunk: bytes) -> None:
        """Write ``chunk`` of the body now, framed as the response is (a chunked-encoding frame or raw
        bytes; nothing for a ``HEAD``). Only between the response's head and its end; a chunk written
        once the client is gone is dropped."""

    @property
    def gone(self) -> bool:
        """Whether the client's connection is closed."""

    def listen(self, listener: LaneListener | None) -> None:
        """Tell ``listener`` what happens to the socket from now on, instead of the previous listener
        (``None``: nobody). A socket already over its high-water mark calls :meth:`LaneListener.pause`
        at once; one already closed, :meth:`LaneListener.gone`."""


def lane_of(scope: Mapping[str, Any]) -> Lane | None:
    """The lane the server offers the request in ``scope`` (``None``: send the body through ASGI)."""
    extensions = scope.get("extensions")
    if extensions is None:
        return None
    lane: Lane | None = extensions.get(LANE_EXTENSION)
    return lane


__all__ = ["LANE_EXTENSION", "Lane", "LaneListener", "lane_of"]
