"""Model management: ``POST /install/{model}`` (pull) and ``GET /models_list/``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final

import msgspec
import structlog
from litestar import Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.di import NamedDependency
from litestar.params import Parameter
from litestar.response import Stream

from minato.auth.caller import Caller
from minato.core.policy import Policy
from minato.core.schemas import InstallProgress, InstallResponse, ModelsList, ModelSummary, families_of
from minato.errors import MinatoError, ModelNotFoundError
from minato.ollama.names import canonical_model_name
from minato.ollama.wire import PullProgress, TagModel
from minato.upstream.ports import Facts, Fleet, FleetDependency, ListingDependency
from minato.upstream.streams import PullProgressStream
from minato.web.api.common import ADMIN_RESPONSES, UPSTREAM_RESPONSES
from minato.web.auth import ADMIN
from minato.web.disconnect import watch_of
from minato.web.streaming import STREAM_HEADERS, StreamFormat

logger = structlog.get_logger("minato.models")

NDJSON: Final = StreamFormat.NDJSON.value
_encode: Final = msgspec.json.Encoder().encode
BYTES_PER_MIB: Final = 1024 * 1024


def _progress_line(item: PullProgress) -> bytes:
    percent = round(item.completed / item.total * 100, 1) if item.total else msgspec.UNSET
    line = InstallProgress(
        status=item.status,
        digest=item.digest or msgspec.UNSET,
        total=item.total or msgspec.UNSET,
        completed=item.completed or msgspec.UNSET,
        percent=percent,
        backend=item.backend or msgspec.UNSET,
    )
    return _encode(line) + b"\n"


async def _relay_progress(stream: PullProgressStream, model: str) -> AsyncIterator[bytes]:
    try:
        async for batch in stream.progress():
            yield b"".join([_progress_line(item) for item in batch])
    except MinatoError as exc:
        logger.warning("pull_failed", model=model, detail=exc.detail)
        yield _encode(InstallProgress(status="error", error=exc.detail)) + b"\n"
    finally:
        await stream.aclose()


async def start_pull(
    request: Request[Any, Any, Any], upstream: Fleet, model: str, backend: str | None
) -> PullProgressStream:
    """Start pulling ``model`` (onto ``backend``, or every reachable one); a model the registry does not
    know is a 404 in Ollama's words with the model's name added (Ollama's own says only "pull model
    manifest: file does not exist")."""
    try:
        return await watch_of(request.scope, request.receive).until(upstream.pull(model, backend))
    except ModelNotFoundError as exc:
        if model in exc.detail:
            raise
        raise ModelNotFoundError(f"cannot pull '{model}': {exc.detail}", headers=exc.headers) from None


async def pull_to_end(stream: PullProgressStream) -> None:
    """Read a pull to its end (raising on failure) and close it."""
    try:
        async for _ in stream.progress():
            pass
    finally:
        await stream.aclose()


@post(
    "/install/{model_name:path}",
    operation_id="InstallModel",
    summary="Pull a model into Ollama",
    description=(
        'Waits for the pull to finish and answers `{"status": "success", "model": ...}`. With '
        "`?stream=true` or `Accept: application/x-ndjson`, relays Ollama's progress lines (`status`, "
        "`digest`, `total`, `completed`, `percent`, and with a pool of backends the `backend` each line is "
        "about) as they come, ending with `success` (once every backend succeeded) or an `error` line. "
        "A model the registry does not know is a 404 either way. With a pool, the model is pulled onto "
        "every reachable backend, or only onto `backend`."
    ),
    status_code=200,
    responses=ADMIN_RESPONSES,
    tags=["models"],
    opt={ADMIN: True},
)
async def install(
    request: Request[Any, Any, Any],
    model: NamedDependency[str],
    upstream: NamedDependency[FleetDependency],
    stream: Annotated[bool, Parameter(description="Relay progress as NDJSON instead of waiting.")] = False,
    backend: Annotated[
        str | None, Parameter(description="Pull onto this backend only (`host:port`, as `/ready` names it).")
    ] = None,
) -> Response[InstallResponse] | Stream:
    """Pull a model, waiting for it or relaying progress."""
    pull = await start_pull(request, upstream, model, backend)
    if stream or NDJSON in request.headers.get("accept", ""):
        return Stream(
            _relay_progress(pull, model),
            media_type=NDJSON,
            headers=STREAM_HEADERS,
            background=BackgroundTask(pull.aclose),
        )
    await watch_of(request.scope, request.receive).until(pull_to_end(pull))
    # Wrapped so each form keeps its own media type: a union return makes Litestar label both JSON.
    return Response(InstallResponse(status="success", model=model))


#: ``/api/show`` lookups one model list makes at once, for an Ollama that does not list capabilities.
CAPABILITY_LOOKUPS: Final = 8


async def capabilities_of(upstream: Facts, models: list[TagModel]) -> list[list[str]]:
    """Each model's capabilities, sorted: as ``/api/tags`` lists them (Ollama 0.30 and later), else as
    ``/api/show`` says (the client's cache, kept ``MINATO_CAPABILITIES_TTL`` seconds, so a list costs
    Ollama a few calls once, not one per model each time); empty when Ollama could not say."""
    slots = asyncio.Semaphore(CAPABILITY_LOOKUPS)

    async def lookup(model: TagModel) -> list[str]:
        if model.capabilities:
            return sorted(model.capabilities)
        async with slots:
            try:
                return sorted(await upstream.capabilities(model.name or model.model))
            except MinatoError as exc:  # the list is still worth having without them
                logger.debug("capabilities_unavailable", model=model.name or model.model, detail=exc.detail)
                return []

    return list(await asyncio.gather(*(lookup(model) for model in models)))


def summarize(model: TagModel, loaded: bool, backends: list[str], capabilities: list[str]) -> ModelSummary:
    """Flatten one ``/api/tags`` entry into Minato's model summary."""
    details = model.details
    return ModelSummary(
        name=model.name or model.model,
        size=model.size,
        size_mb=round(model.size / BYTES_PER_MIB, 2),
        modified_at=model.modified_at,
        digest=model.digest,
        format=details.format,
        family=details.family,
        families=families_of(details),
        parameter_size=details.parameter_size,
        quantization_level=details.quantization_level,
        loaded=loaded,
        backends=backends,
        capabilities=capabilities,
    )


@get(
    "/models_list/",
    operation_id="ListModels",
    summary="List installed models",
    description=(
        "Every model Ollama has on disk, with size (bytes and MiB), family, quantization, whether "
        "it is loaded in memory now, which backends have it, and its capabilities (a model without "
        "`completion`, such as an embedding model, cannot chat). A key limited to some models sees only those."
    ),
    responses=UPSTREAM_RESPONSES,
    tags=["models"],
)
async def models_list(
    upstream: NamedDependency[ListingDependency],
    caller: NamedDependency[Caller],
    policy: NamedDependency[Policy],
) -> ModelsList:
    """Return the installed models the caller's key may use."""
    tags, ps = await asyncio.gather(upstream.list_models(), upstream.running())
    loaded = {canonical_model_name(m.name or m.model) for m in ps.models}
    allowed = [m for m in tags.models if policy.may_see(caller, m.name or m.model)]
    return ModelsList(
        models_list=[
            summarize(m, canonical_model_name(m.name or m.model) in loaded, upstream.holders(m.name or m.model), can)
            for m, can in zip(allowed, await capabilities_of(upstream, allowed), strict=True)
        ]
    )
