"""Model lifecycle and server info: load, unload, delete, what runs, one model's status, ``GET /``.

Ollama resets a model's expiry on every request: ``keep_alive`` on a load or generation request is
the "expiration period" of the seed systems, and a request without it falls back to Ollama's default.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Annotated, Any

from litestar import Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter

from minato import __version__
from minato.auth.caller import Caller
from minato.core.options import resolve_keep_alive
from minato.core.policy import Policy
from minato.core.schemas import (
    DetailsView,
    LoadResult,
    ModelAction,
    ModelStatus,
    OllamaInfo,
    RunningList,
    RunningView,
    ServerInfo,
    expiry,
)
from minato.errors import MinatoError, ModelNotFoundError
from minato.ollama.names import canonical_model_name
from minato.ollama.options import INT32_MAX
from minato.ollama.wire import RunningModel, ShowResponse
from minato.settings import Settings
from minato.upstream.ports import FleetDependency, Models, ModelsDependency, OverviewDependency
from minato.web.api.common import ADMIN_RESPONSES, UPSTREAM_RESPONSES
from minato.web.api.models import pull_to_end, start_pull
from minato.web.auth import ADMIN
from minato.web.disconnect import watch_of
from minato.web.params import KEEP_ALIVE_DESCRIPTION

#: The lifecycle routes share a tag; the actions need an admin key and answer 200 (not 201 or 204).
_post = partial(post, status_code=200, responses=ADMIN_RESPONSES, tags=["lifecycle"], opt={ADMIN: True})
_delete = partial(delete, status_code=200, responses=ADMIN_RESPONSES, tags=["lifecycle"], opt={ADMIN: True})
_get = partial(get, responses=UPSTREAM_RESPONSES, tags=["lifecycle"])


async def _show_if_installed(upstream: Models, model: str) -> ShowResponse | None:
    try:
        return await upstream.show(model)
    except ModelNotFoundError:
        return None


def _find(running: list[RunningModel], model: str) -> RunningModel | None:
    wanted = canonical_model_name(model)
    return next((m for m in running if canonical_model_name(m.name or m.model) == wanted), None)


@_post(
    "/load/{model_name:path}",
    operation_id="LoadModel",
    summary="Load a model into memory",
    description=(
        "Loads the model (Ollama: a generate request without a prompt) and answers once it is "
        "ready, with its running status. `pull=true` pulls it first when it is not installed. With a "
        "pool of backends, it is loaded where routing would send the model's next request, or on `backend`."
    ),
)
async def load(
    request: Request[Any, Any, Any],
    model: NamedDependency[str],
    upstream: NamedDependency[FleetDependency],
    settings: NamedDependency[Settings],
    keep_alive: Annotated[str | None, Parameter(description=KEEP_ALIVE_DESCRIPTION)] = None,
    num_ctx: Annotated[
        int | None, Parameter(ge=1, le=INT32_MAX, description="Context window to load the model with.")
    ] = None,
    pull: Annotated[bool, Parameter(description="Pull the model first when it is not installed.")] = False,
    backend: Annotated[
        str | None, Parameter(description="Load on this backend (`host:port`, as `/ready` names it).")
    ] = None,
) -> LoadResult:
    """Load a model and report its running status."""
    alive = resolve_keep_alive(keep_alive, settings)
    if pull and not upstream.holders(model) and not await _installed(upstream, model):
        stream = await start_pull(request, upstream, model, backend)
        await watch_of(request.scope, request.receive).until(pull_to_end(stream))
    options = {"num_ctx": num_ctx} if num_ctx is not None else {}
    chosen = await watch_of(request.scope, request.receive).until(upstream.load(model, alive, options, backend))
    wanted = canonical_model_name(model)
    entry = next(
        (
            m
            for m in (await upstream.running()).models
            if canonical_model_name(m.name or m.model) == wanted and m.backend in {chosen, ""}
        ),
        None,
    )
    return LoadResult(
        model=model, loaded=entry is not None, running=RunningView.of(entry) if entry else None, backend=chosen
    )


async def _installed(upstream: Models, model: str) -> bool:
    return await _show_if_installed(upstream, model) is not None


@_post(
    "/unload/{model_name:path}",
    operation_id="UnloadModel",
    summary="Unload a model from memory",
    description=(
        "Asks Ollama to unload the model now (it finishes running requests first), on every backend that "
        "has it. Fine if it was not loaded."
    ),
)
async def unload(model: NamedDependency[str], upstream: NamedDependency[FleetDependency]) -> ModelAction:
    """Unload a model (idempotent)."""
    await upstream.unload(model)
    return ModelAction(status="unloaded", model=model)


@_delete(
    "/models/{model_name:path}",
    operation_id="DeleteModel",
    summary="Delete a model from disk",
    description="Removes the model from every backend that has it; 404 when none has.",
)
async def delete_model(model: NamedDependency[str], upstream: NamedDependency[FleetDependency]) -> ModelAction:
    """Delete an installed model (404 if there is none)."""
    await upstream.delete(model)
    return ModelAction(status="deleted", model=model)


@_get(
    "/running",
    operation_id="RunningModels",
    summary="Models loaded in memory",
    description="Every loaded model, with the backend it is loaded on. A key limited to some models sees only those.",
)
async def running(
    upstream: NamedDependency[ModelsDependency], caller: NamedDependency[Caller], policy: NamedDependency[Policy]
) -> RunningList:
    """List loaded models the caller's key may use, with their memory use, context length and expiry."""
    models = (await upstream.running()).models
    return RunningList(running=[RunningView.of(m) for m in models if policy.may_see(caller, m.name or m.model)])


@_get(
    "/status/{model_name:path}",
    operation_id="ModelStatus",
    summary="One model's status",
    description="Installed? Loaded? Until when? Size, details, capabilities and context length.",
)
async def status(model: NamedDependency[str], upstream: NamedDependency[ModelsDependency]) -> ModelStatus:
    """Report what Ollama knows about one model; an unknown model is reported as not installed."""
    shown, ps, tags = await asyncio.gather(
        _show_if_installed(upstream, model), upstream.running(), upstream.list_models()
    )
    if shown is None:
        return ModelStatus(model=model, installed=False, loaded=False)
    entry = _find(ps.models, model)
    wanted = canonical_model_name(model)
    size = next((t.size for t in tags.models if canonical_model_name(t.name or t.model) == wanted), None)
    info = shown.model_info or {}
    context = info.get(f"{info.get('general.architecture', '')}.context_length")
    return ModelStatus(
        model=model,
        installed=True,
        loaded=entry is not None,
        expires_at=expiry(entry.expires_at)[0] if entry else None,
        size=size,
        details=DetailsView.of(shown.details),
        capabilities=shown.capabilities,
        context_length=context if isinstance(context, int) else (entry.context_length if entry else None),
    )


@get("/", operation_id="ServerInfo", summary="Service and Ollama information", tags=["health"])
async def server_info(
    upstream: NamedDependency[OverviewDependency], caller: NamedDependency[Caller], policy: NamedDependency[Policy]
) -> ServerInfo:
    """Name and version of this service; Ollama's URL and version (or why it is unreachable), and every
    backend of the pool; the models the caller's key may use (in the backends' lists too)."""
    try:
        version, tags, ps = await asyncio.gather(upstream.version(), upstream.list_models(), upstream.running())
    except MinatoError as exc:
        backends = policy.visible_backends(caller, upstream.backends())
        ollama = OllamaInfo(url=upstream.base_url, reachable=False, reason=exc.detail, backends=backends)
        return ServerInfo(service="minato", version=__version__, ollama=ollama, installed=[], running=[])
    backends = policy.visible_backends(caller, upstream.backends())
    return ServerInfo(
        service="minato",
        version=__version__,
        ollama=OllamaInfo(url=upstream.base_url, reachable=True, version=version, backends=backends),
        installed=[m.name or m.model for m in tags.models if policy.may_see(caller, m.name or m.model)],
        running=[m.name or m.model for m in ps.models if policy.may_see(caller, m.name or m.model)],
    )
