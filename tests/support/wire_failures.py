"""Ollama addresses that fail for real before any server answers: a connection refused, a name that
does not resolve, an address the kernel will not connect to, a connection that never completes.

(The failures a server gives, a dropped or reset connection, a stall, a TLS handshake it cannot
speak, are :class:`tests.support.served_ollama.ServedOllama`'s.)
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

#: A name under ``.invalid`` never resolves (RFC 6761): getaddrinfo fails at once, offline too.
UNRESOLVABLE_URL = "http://ollama.invalid:11434"
#: A link-local address without an interface: the kernel refuses the connect itself (EINVAL, or
#: EAFNOSUPPORT without IPv6), an OS error Minato has no particular words for; nothing is sent.
UNROUTABLE_URL = "http://[fe80::1]:11434"


def refused_url() -> str:
    """``http://127.0.0.1:<port>`` where nobody listens: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # closed again: the port stays free while this test runs


@contextlib.contextmanager
def unanswered_url() -> Iterator[str]:
    """A loopback port whose accept queue is full and never drained: the kernel drops each further
    SYN, so a connect never completes and only the client's connect timeout ends it."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # room for one connection nobody accepts
        port: int = listener.getsockname()[1]
        for _ in range(2):  # the first fills the queue; the second's SYN is dropped and proves it full
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield f"http://127.0.0.1:{port}"
