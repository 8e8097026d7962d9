"""The pages Minato serves itself: the playground, static files shipped in the package.

The page holds no secret (the key is typed into it and kept in the browser), so its router is
public like the docs router; everything it shows comes from Minato's own API, called with the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from litestar import Request, Response, Router
from litestar.exceptions import NotFoundException
from litestar.static_files import create_static_files_router

from minato.web.auth import PUBLIC
from minato.web.rendering import error_response

PLAYGROUND_DIRECTORY: Final = Path(__file__).parent / "static" / "playground"


def content_security_policy(*directives: str) -> str:
    """A page's policy: nothing allowed by default, the page's own ``directives``, and what every page
    of Minato forbids: a ``<base>`` moving its relative URLs, forms posting anywhere, and being framed
    by any site (a framed docs or playground page, clicked through by a visitor who typed a key into
    it, would run admin calls for the framing site)."""
    return "; ".join(
        ("default-src 'none'", *directives, "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'")
    )


def page_headers(policy: str) -> dict[str, str]:
    """The headers of every page Minato serves: its policy, no framing for browsers that ignore
    ``frame-ancestors``, no MIME sniffing, and no referrer leaking the gateway's address."""
    return {
        "Content-Security-Policy": policy,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


#: The playground loads only its own files and talks only to Minato: no inline script or style, no
#: other origin.
PAGE_HEADERS: Final = page_headers(
    content_security_policy("script-src 'self'", "style-src 'self'", "img-src 'self' data: blob:", "connect-src 'self'")
)


def _with_page_headers(response: Response[object]) -> Response[object]:
    response.headers.update(PAGE_HEADERS)
    return response


def _no_such_file(request: Request[Any, Any, Any], _: NotFoundException) -> Response[Any]:
    # Litestar's sentence echoes the path, which may carry what the client meant as a model name.
    return error_response(404, "no such file in the playground", path=request.scope["path"])


def playground_router() -> Router:
    """``/playground``: the page (``index.html``) and its script and style sheet, open to anyone."""
    return create_static_files_router(
        path="/playground",
        directories=[PLAYGROUND_DIRECTORY],
        html_mode=True,
        name="playground",
        opt={PUBLIC: True},
        after_request=_with_page_headers,
        exception_handlers={NotFoundException: _no_such_file},
        include_in_schema=False,
    )
