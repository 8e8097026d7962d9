"""Ollama's own API on Minato's port: every route of current Ollama, relayed to the same route.

Model management (pull, push, create, copy, delete, blobs) needs an admin key; Ollama's account
and cloud routes are refused unless ``MINATO_ALLOW_CLOUD=true`` (then admin-only).
"""

from __future__ import annotations

from typing import Any, Final

from litestar import Request, Response, delete, get, head, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from minato.auth.caller import Caller
from minato.upstream.ports import Spread
from minato.web.auth import ADMIN
from minato.web.doors import calls
from minato.web.limit_headers import GENERATES
from minato.web.rendering import StreamDialect
from minato.web.runtime import runtime_of

TAGS: Final = ["ollama"]
#: A path segment Minato passes on as it is (Ollama's route reads it).
PathText = FromPath[str]
_ADMIN: Final = {ADMIN: True}
#: The ``opt`` of a door's route that takes a generation slot (its answers carry the limit headers).
GENERATION_ROUTE: Final = {GENERATES: True}
_SAME: Final = "Relayed to Ollama's route of the same name; the answer is Ollama's, byte for byte."


def _doc(summary: str, more: str = "") -> dict[str, Any]:
    return {"summary": summary, "description": f"{more} {_SAME}".strip(), "tags": TAGS}


def _slot_doc(summary: str) -> dict[str, Any]:
    """A generation's description and ``opt``: it takes a generation slot."""
    return {**_doc(summary, "Takes a generation slot."), "opt": GENERATION_ROUTE}


@post("/api/generate", operation_id="OllamaGenerate", **_slot_doc("Ollama: generate"))
async def api_generate(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """Ollama's ``/api/generate``."""
    return await calls.generation(
        request, caller, StreamDialect.NDJSON, stream_default=True, native=True, answer_limit=calls.NUM_PREDICT
    )


@post("/api/chat", operation_id="OllamaChat", **_slot_doc("Ollama: chat"))
async def api_chat(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """Ollama's ``/api/chat``."""
    return await calls.generation(
        request, caller, StreamDialect.NDJSON, stream_default=True, native=True, answer_limit=calls.NUM_PREDICT
    )


@post("/api/embed", operation_id="OllamaEmbed", **_slot_doc("Ollama: embeddings"))
async def api_embed(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """Ollama's ``/api/embed``."""
    return await calls.generation(request, caller, StreamDialect.NDJSON, stream_default=False, native=True)


@post("/api/embeddings", operation_id="OllamaEmbeddings", **_slot_doc("Ollama: embeddings (legacy)"))
async def api_embeddings(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """Ollama's legacy ``/api/embeddings``."""
    return await calls.generation(request, caller, StreamDialect.NDJSON, stream_default=False, native=True)


@get("/api/tags", operation_id="OllamaTags", **_doc("Ollama: installed models", "Only the key's models."))
async def api_tags(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """Ollama's ``/api/tags``, filtered to the key's models."""
    return await calls.listing(request, caller, field="models", name="model")


@head("/api/tags", operation_id="OllamaTagsHead", **_doc("Ollama: installed models, status only"))
async def api_tags_head(request: Request[Any, Any, Any]) -> Response[None]:
    """Ollama's ``HEAD /api/tags``."""
    return await calls.head(request)


@get("/api/ps", operation_id="OllamaPs", **_doc("Ollama: loaded models", "Only the key's models."))
async def api_ps(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """Ollama's ``/api/ps``, filtered to the key's models."""
    return await calls.listing(request, caller, field="models", name="model", spread=Spread.LOADED)


@post("/api/show", operation_id="OllamaShow", **_doc("Ollama: one model's details"))
async def api_show(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """Ollama's ``/api/show``."""
    return await calls.about_models(request, caller)


@get("/api/version", operation_id="OllamaVersion", **_doc("Ollama: version"))
async def api_version(request: Request[Any, Any, Any]) -> Response[Any]:
    """Ollama's ``/api/version`` (numeric, as Open WebUI needs)."""
    return await calls.plain(request)


@head("/api/version", operation_id="OllamaVersionHead", **_doc("Ollama: version, status only"))
async def api_version_head(request: Request[Any, Any, Any]) -> Response[None]:
    """Ollama's ``HEAD /api/version``."""
    return await calls.head(request)


@post("/api/pull", operation_id="OllamaPull", opt=_ADMIN, **_doc("Ollama: pull a model", "Admin key."))
async def api_pull(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """Ollama's ``/api/pull`` (onto every reachable backend of a pool)."""
    return await calls.about_models(request, caller, stream_default=True, spread=Spread.EVERY)


@post("/api/push", operation_id="OllamaPush", opt=_ADMIN, **_doc("Ollama: push a model", "Admin key."))
async def api_push(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """Ollama's ``/api/push``."""
    return await calls.about_models(request, caller, stream_default=True)


@post("/api/create", operation_id="OllamaCreate", opt=_ADMIN, **_doc("Ollama: create a model", "Admin key."))
async def api_create(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """Ollama's ``/api/create`` (on the first reachable backend of a pool, where blobs are uploaded)."""
    return await calls.about_models(request, caller, stream_default=True, route_by=None)


@post("/api/copy", operation_id="OllamaCopy", opt=_ADMIN, **_doc("Ollama: copy a model", "Admin key."))
async def api_copy(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """Ollama's ``/api/copy`` (on a backend having the source)."""
    return await calls.about_models(request, caller, route_by="source")


@delete(
    "/api/delete",
    operation_id="OllamaDelete",
    status_code=200,
    opt=_ADMIN,
    **_doc("Ollama: delete a model", "Admin key; the model is named in a JSON body."),
)
async def api_delete(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """Ollama's ``DELETE /api/delete`` (on every backend of a pool that has the model)."""
    return await calls.about_models(request, caller, spread=Spread.HOLDERS)


@post(
    "/api/blobs/{digest:str}",
    operation_id="OllamaBlobUpload",
    opt=_ADMIN,
    **_doc("Ollama: upload a blob", "Admin key; bounded by MINATO_MAX_BODY_BYTES."),
)
async def api_blob_upload(request: Request[Any, Any, Any], digest: PathText) -> Response[Any]:
    """Ollama's ``POST /api/blobs/{digest}``."""
    return await calls.plain(request, digest)


@head("/api/blobs/{digest:str}", operation_id="OllamaBlobHead", opt=_ADMIN, **_doc("Ollama: is a blob there"))
async def api_blob_head(request: Request[Any, Any, Any], digest: PathText) -> Response[None]:
    """Ollama's ``HEAD /api/blobs/{digest}``."""
    return await calls.head(request, digest)


_ACCOUNT: Final = "Refused (403) unless MINATO_ALLOW_CLOUD=true; then admin-only."


async def _account(request: Request[Any, Any, Any], caller: Caller, *segments: str) -> Response[Any]:
    runtime_of(request).policy.check_account_route(caller)
    return await calls.plain(request, *segments)


async def _account_plain(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """One of Ollama's cloud account routes without a path parameter."""
    return await _account(request, caller)


async def _account_rest(
    request: Request[Any, Any, Any], caller: NamedDependency[Caller], rest: PathText
) -> Response[Any]:
    """Ollama's ``/api/experimental/*``, whatever the method."""
    return await _account(request, caller, rest)


# One function serves the routes that differ only in their method, path and documentation.
api_me = post("/api/me", operation_id="OllamaAccountMe", **_doc("Ollama: the signed-in ollama.com account", _ACCOUNT))(
    _account_plain
)
api_signout = post(
    "/api/signout", operation_id="OllamaSignout", **_doc("Ollama: sign the server out of ollama.com", _ACCOUNT)
)(_account_plain)
api_status = get("/api/status", operation_id="OllamaStatus", **_doc("Ollama: cloud status", _ACCOUNT))(_account_plain)
api_experimental_get = get(
    "/api/experimental/{rest:str}",
    operation_id="OllamaExperimentalGet",
    **_doc("Ollama: experimental cloud routes (model recommendations, ...)", _ACCOUNT),
)(_account_rest)
api_experimental_post = post(
    "/api/experimental/{rest:str}",
    operation_id="OllamaExperimentalPost",
    **_doc("Ollama: experimental cloud routes (web search, web fetch, ...)", _ACCOUNT),
)(_account_rest)


@delete(
    "/api/user/keys/{key:str}",
    operation_id="OllamaSignoutKey",
    status_code=200,
    **_doc("Ollama: sign out (deprecated alias)", _ACCOUNT),
)
async def api_user_key(
    request: Request[Any, Any, Any], caller: NamedDependency[Caller], key: PathText
) -> Response[Any]:
    """Ollama's deprecated ``DELETE /api/user/keys/{key}``."""
    return await _account(request, caller, key)


NATIVE_HANDLERS: Final = [
    api_generate,
    api_chat,
    api_embed,
    api_embeddings,
    api_tags,
    api_tags_head,
    api_ps,
    api_show,
    api_version,
    api_version_head,
    api_pull,
    api_push,
    api_create,
    api_copy,
    api_delete,
    api_blob_upload,
    api_blob_head,
    api_me,
    api_signout,
    api_user_key,
    api_status,
    api_experimental_get,
    api_experimental_post,
]
