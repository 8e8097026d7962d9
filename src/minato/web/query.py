"""Query-string rules every route shares: a single-value parameter may be given only once.

Litestar would silently keep one of ``message=a&message=b``; a request that says two things is
refused instead. Parameters a route declares as lists (``stop``, ``image_url``) may repeat.
"""

from __future__ import annotations

import functools
from typing import Any

from litestar import Request
from litestar.handlers import HTTPRouteHandler

from minato.errors import ErrorItem, InvalidInputError
from minato.web.params import QUERY_OPT, list_fields


# Bounded: an app registers its own copy of each handler (a couple of dozen), tests build many apps.
@functools.lru_cache(maxsize=256)
def repeatable_parameters(handler: HTTPRouteHandler) -> frozenset[str]:
    """The query parameters a registered ``handler`` (and the dependencies it uses) declares as lists."""
    # The kwargs model is how Litestar itself decides which parameters it reads as lists.
    model = handler.create_kwargs_model(path_parameters={})
    query_type = handler.opt.get(QUERY_OPT)  # a query read in one conversion declares its lists there
    declared = list_fields(query_type) if query_type is not None else frozenset()
    return frozenset(model.sequence_query_parameter_names) | declared


async def reject_repeated_parameters(request: Request[Any, Any, Any]) -> None:
    """``before_request`` hook: a 422 naming every single-value parameter given more than once."""
    raw = [part.partition(b"=")[0] for part in request.scope["query_string"].split(b"&") if part]
    if len(set(raw)) == len(raw) and not any(b"%" in key or b"+" in key for key in raw):
        return  # the common case, told from the raw bytes: no key repeats, none is escaped
    keys = [key for key, _ in request.query_params.multi_items()]  # one entry per occurrence
    unique = dict.fromkeys(keys)
    if len(unique) == len(keys):
        return  # the common case: no key repeats
    allowed = repeatable_parameters(request.route_handler)
    repeated = sorted(key for key in unique if key not in allowed and keys.count(key) > 1)
    if repeated:
        raise InvalidInputError(
            [ErrorItem(loc=["query", key], msg="was given more than once", type="value_error") for key in repeated]
        )
