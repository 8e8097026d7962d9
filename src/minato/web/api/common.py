"""What every handler shares: the documented error responses, the route's model and the checks before
a generation."""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Final, TypeVar

from litestar import Request, Response
from litestar.openapi import ResponseSpec
from litestar.params import Parameter

from minato.auth.caller import ANONYMOUS
from minato.core.generation import GenerationParts
from minato.core.usage import Usage
from minato.errors import CapabilityError, ErrorItem, InvalidInputError, ModelNotFoundError
from minato.observability.record import RequestRecord, record_of
from minato.web.auth import caller_of, tokens_left
from minato.web.disconnect import watch_of
from minato.web.limits import MAX_JSON_DEPTH, json_too_deep
from minato.web.params import validate_model_name
from minato.web.query import reject_repeated_parameters
from minato.web.rendering import error_spec
from minato.web.runtime import runtime_of
from minato.web.streaming import is_minato_event_id

T = TypeVar("T")


#: What a route that asks Ollama may answer besides what every route may (:mod:`minato.web.openapi` adds
#: those: 401, 403, 413, 414, 422, 429 and the shared state's 503, as they apply).
UPSTREAM_RESPONSES: Final[dict[int, ResponseSpec]] = {
    502: error_spec("Ollama failed in another way; `detail` carries Ollama's message."),
    503: error_spec("Ollama is unreachable (the detail names its URL) or busy (with `Retry-After`)."),
    504: error_spec("Ollama did not answer in time."),
}
#: The model actions (pull, load, unload, delete): Ollama may refuse them or not know the model.
ADMIN_RESPONSES: Final[dict[int, ResponseSpec]] = {
    400: error_spec("Ollama refused the request."),
    404: error_spec("Ollama has no such model."),
    **UPSTREAM_RESPONSES,
}
GENERATION_RESPONSES: Final[dict[int, ResponseSpec]] = {
    **ADMIN_RESPONSES,
    400: error_spec("Ollama refused the request (e.g. the model cannot chat)."),
    503: error_spec(
        "Ollama is unreachable (the detail names its URL), Ollama is busy, or Minato's generation queue is "
        "full; busy answers carry `Retry-After`."
    ),
}


def note_model(request: Request[Any, Any, Any], model: str) -> RequestRecord | None:
    """Put the model on the request's log line and return that line's record."""
    record = record_of(request.scope)
    if record is not None:
        record.model = model
    return record


ModelName = Annotated[
    str,
    Parameter(
        description="Ollama model name, with optional tag and namespace: `llama3.2:1b`, `hf.co/org/repo:Q4_K_M`."
    ),
]


def provide_model(request: Request[Any, Any, Any], model_name: ModelName) -> str:
    """The ``model`` dependency of the model routes: the name validated, and on the log line."""
    model = validate_model_name(model_name)
    note_model(request, model)
    return model


def generation_parts(request: Request[Any, Any, Any], model_name: str) -> GenerationParts:
    """What every generation route (text, posted and vision) gathers alike, with plain calls.

    Not Litestar dependencies: resolving half a dozen of them cost more per request than the rest of
    the handler (they run as concurrent tasks). A generation route is never public, so a request
    without a caller is one to a deployment without keys.
    """
    runtime = runtime_of(request)
    model = validate_model_name(model_name)
    record = note_model(request, model)
    scope = request.scope
    guarded = caller_of(scope)
    return GenerationParts(
        watch_of(scope, request.receive),
        record,
        Usage(runtime.quota, runtime.state.usage, guarded, record, model),
        tokens_left(scope),
        runtime.upstream,
        runtime.sessions,
        runtime.admission,
        runtime.settings,
        runtime.policy,
        guarded or ANONYMOUS,
        model,
    )


#: First path segments that are never model names: Ollama's and OpenAI's own APIs live there.
RESERVED_PREFIXES: Final = frozenset({"api", "v1"})


def _static_paths(request: Request[Any, Any, Any]) -> list[str]:
    return sorted({route.path for route in request.app.routes if "{" not in route.path})


async def require_known_model(request: Request[Any, Any, Any]) -> None:
    """Before a generation: a 404 unless the path names a model Ollama has.

    Runs before the parameters are validated, so a typo (``/favicon.ico``, ``/models-list``) is told
    that it names neither a route nor a model, instead of that ``message`` is missing. When Ollama
    cannot be asked, the generation goes ahead and meets the honest 503 itself.
    """
    raw = str(request.path_params.get("model_name", ""))
    catch_all = request.scope.get("path_template", "").startswith("/{")
    where = f"{request.method} /{raw.lstrip('/')}: no such route, and " if catch_all else ""
    if raw.lstrip("/").split("/", 1)[0].lower() in RESERVED_PREFIXES:
        raise ModelNotFoundError(
            f"{where}paths under /api/ and /v1/ are reserved for Ollama's and OpenAI's APIs, never model names"
        )
    name = validate_model_name(raw)
    note_model(request, name)
    runtime = runtime_of(request)
    caller = caller_of(request.scope) or ANONYMOUS
    runtime.policy.check_model(caller, name)
    catalog = runtime.catalog
    if await catalog.knows(name) is not False:
        return
    hints = [hint for hint in catalog.similar(name) if caller.allows(hint)]
    if catch_all:
        hints = difflib.get_close_matches(f"/{name}", _static_paths(request), n=2) + hints
    hint = f" (did you mean {' or '.join(hints)}?)" if hints else ""
    raise ModelNotFoundError(
        f"{where}model '{name}' not found in Ollama{hint}; the installed models are listed at GET /models_list/"
    )


def require_vision(model: str, capabilities: frozenset[str]) -> None:
    """A 400 unless ``model`` can read images (its capabilities are listed when it cannot)."""
    if "vision" not in capabilities:
        listed = ", ".join(sorted(capabilities)) or "none reported"
        raise CapabilityError(f"model '{model}' cannot read images (its capabilities: {listed})")


#: Route ``opt`` keys: the route is a generation (its model is checked before its parameters are
#: read), and the route serves the SSE an ``EventSource`` may reconnect to.
GENERATION_OPT: Final = "generation"
RECONNECTABLE_OPT: Final = "reconnectable"
#: Route ``opt`` key: the OpenAPI request body of a route that reads its body itself (not as ``data``).
REQUEST_BODY_OPT: Final = "request_body"


async def before_handler(request: Request[Any, Any, Any]) -> Response[None] | None:
    """The app's one ``before_request`` hook (a route-level hook would replace it, not add to it).

    Every route: a single-value query parameter given twice is a 422, and a model in the path that
    the policy refuses the caller (outside its key's scope, or one of Ollama's cloud models) is a 403.
    A generation route: a 204 for a browser reconnecting to a Minato stream that is over, and a 404
    unless the path names a model.
    """
    await reject_repeated_parameters(request)
    opt = request.route_handler.opt
    if not opt.get(GENERATION_OPT):
        if "model_name" in request.path_params:
            model = validate_model_name(str(request.path_params["model_name"]))
            note_model(request, model)
            runtime_of(request).policy.check_model(caller_of(request.scope) or ANONYMOUS, model)
    elif opt.get(RECONNECTABLE_OPT) and is_minato_event_id(request.headers.get("last-event-id")):
        return Response(None, status_code=204)
    else:
        await require_known_model(request)
    if _BODY_PARAMETER in request.route_handler.parsed_fn_signature.parameters:
        await _check_body_depth(request)
    return None


#: The name Litestar gives the parameter that receives a decoded JSON body.
_BODY_PARAMETER: Final = "data"


async def _check_body_depth(request: Request[Any, Any, Any]) -> None:
    """A 422 for a JSON body nested too deep to decode, measured before Litestar decodes it (the read is
    kept: Litestar's decoding reads the same bytes)."""
    if json_too_deep(await request.body()):
        raise InvalidInputError(
            [ErrorItem(loc=["body"], msg=f"is nested deeper than {MAX_JSON_DEPTH} levels", type="value_error")]
        )
