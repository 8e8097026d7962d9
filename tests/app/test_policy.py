"""The one policy: cloud models on every route, options compared as numbers, what a key may see and
read (``GET /``, ``/ready``, ``/metrics``), deeply nested bodies, and the keep_alive words."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from minato.settings import Settings
from minato.web.app import create_app
from minato.web.limits import MAX_JSON_DEPTH
from tests.support.payloads import catalogue, chat_answer, show
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
USER = "policy-user-key"
ADMIN = "policy-admin-key"
SCRAPER = "policy-scrape-key"
AS_USER = {"Authorization": f"Bearer {USER}"}
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
AS_SCRAPER = {"Authorization": f"Bearer {SCRAPER}"}
CLOUD_MODELS = ("gpt-oss:120b-cloud", "glm-4.6:cloud")
#: Models installed on the mocked Ollama: the cloud ones too, so nothing but the policy stops them.
INSTALLED = ("llama3.2:latest", "llava:7b", *CLOUD_MODELS)


async def _client(settings: Settings, ollama: ServedOllama, **changes: Any) -> AsyncIterator[Client]:
    ollama.get("/api/tags", name="tags").respond(200, json=catalogue(*INSTALLED))
    ollama.post("/api/show", name="show").respond(200, json=show(["completion", "vision"]))
    configured = msgspec.structs.replace(settings, **changes)
    app = create_app(configured)
    async with AsyncTestClient(app=app) as client:
        yield client


@pytest.fixture(name="keyless")
async def fx_keyless(settings: Settings, ollama: ServedOllama) -> AsyncIterator[Client]:
    async for client in _client(settings, ollama):
        yield client


@pytest.fixture(name="keyed")
async def fx_keyed(settings: Settings, ollama: ServedOllama) -> AsyncIterator[Client]:
    """A user key (with a num_ctx cap of 8192), an admin key and a metrics key."""
    async for client in _client(
        settings, ollama, api_keys=(USER,), admin_keys=(ADMIN,), metrics_keys=(SCRAPER,), user_max_num_ctx=8192
    ):
        yield client


def _model_routes() -> list[tuple[str, str]]:
    """Every route of Minato's own API that names a model in its path, from the app itself (a new route
    cannot be forgotten here), as ``(method, path)`` with the model left as ``{model}``."""
    app = create_app(Settings(session_store="memory://"), configure_logs=False)
    routes = set()
    for route in app.routes:
        if "{model_name:path}" not in route.path:
            continue
        for method in getattr(route, "methods", ()):
            if method not in {"HEAD", "OPTIONS"}:
                routes.add((method, route.path.replace("{model_name:path}", "{model}")))
    return sorted(routes)


MODEL_ROUTES = _model_routes()


def test_the_route_walk_finds_every_generation_and_lifecycle_route() -> None:
    paths = {path for _, path in MODEL_ROUTES}

    assert {"/{model}", "/stream/{model}", "/vision/{model}", "/stream/vision/{model}"} <= paths
    assert {"/load/{model}", "/unload/{model}", "/install/{model}", "/models/{model}", "/status/{model}"} <= paths
    assert ("POST", "/{model}") in MODEL_ROUTES
    assert ("POST", "/stream/{model}") in MODEL_ROUTES


def _ask(method: str, path: str, model: str) -> dict[str, Any]:
    """A request that would run on ``path`` for ``model`` (the query or body each route needs)."""
    url = path.replace("{model}", model)
    if "vision" in path:
        return {"method": method, "url": url, "params": {"message": "what is it?"}, "files": {"images": b"x"}}
    if method == "POST" and path in {"/{model}", "/stream/{model}"}:
        return {"method": method, "url": url, "json": {"message": "hi"}}
    return {"method": method, "url": url, "params": {"message": "hi"} if method == "GET" else {}}


@pytest.mark.parametrize("model", CLOUD_MODELS)
@pytest.mark.parametrize(("method", "path"), MODEL_ROUTES)
@pytest.mark.parametrize("who", ["keyless", "admin"])
async def test_every_route_naming_a_model_refuses_a_cloud_model(
    settings: Settings, ollama: ServedOllama, who: str, method: str, path: str, model: str
) -> None:
    ran = ollama.route(method__in=["POST", "DELETE"], path__regex=r"^/api/(chat|generate|pull|delete)$").respond(
        200, json=chat_answer()
    )
    changes: dict[str, Any] = {"admin_keys": (ADMIN,)} if who == "admin" else {}
    async for client in _client(settings, ollama, **changes):
        response = await client.request(**_ask(method, path, model), headers=AS_ADMIN if who == "admin" else {})

    assert response.status_code == 403, response.text
    assert "MINATO_ALLOW_CLOUD" in response.json()["detail"]
    assert not ran.called, "the cloud model reached Ollama"


@pytest.mark.parametrize(("method", "path"), [("GET", "/{model}"), ("POST", "/load/{model}")])
async def test_with_cloud_allowed_a_cloud_model_runs(
    settings: Settings, ollama: ServedOllama, method: str, path: str
) -> None:
    ran = ollama.post(path__regex=r"^/api/(chat|generate)$").respond(200, json=chat_answer())
    async for client in _client(settings, ollama, allow_cloud=True):
        response = await client.request(**_ask(method, path, CLOUD_MODELS[0]))

    assert response.status_code == 200, response.text
    assert ran.called


# -- options compared as numbers -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/embed"])
@pytest.mark.parametrize("spelling", ["99999999.0", "1e8", "1E+8", "8193.0", "8.193e3"])
async def test_a_user_key_cannot_pass_the_num_ctx_cap_by_spelling_it_as_a_float(
    keyed: Client, ollama: ServedOllama, path: str, spelling: str
) -> None:
    route = ollama.post(path).respond(200, json=chat_answer())
    body = f'{{"model":"llama3.2","prompt":"hi","input":"hi","options":{{"num_ctx":{spelling}}}}}'.encode()

    response = await keyed.post(path, content=body, headers={**AS_USER, "Content-Type": "application/json"})

    assert response.status_code == 403, response.text
    assert "num_ctx" in response.json()["error"]
    assert not route.called


@pytest.mark.parametrize("spelling", ["4096.5", '"4096"', "true", "[4096]"])
@pytest.mark.parametrize("headers", [AS_USER, AS_ADMIN], ids=["user", "admin"])
async def test_a_num_ctx_that_is_not_a_whole_number_is_a_400_in_ollamas_shape(
    keyed: Client, ollama: ServedOllama, spelling: str, headers: dict[str, str]
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())
    body = f'{{"model":"llama3.2","messages":[],"options":{{"num_ctx":{spelling}}}}}'.encode()

    response = await keyed.post("/api/chat", content=body, headers={**headers, "Content-Type": "application/json"})

    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}
    assert "num_ctx" in response.json()["error"]
    assert not route.called


async def test_a_whole_number_written_as_a_float_within_the_cap_is_relayed_as_sent(
    keyed: Client, ollama: ServedOllama
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())
    body = b'{"model":"llama3.2","messages":[],"options":{"num_ctx":4096.0}}'

    response = await keyed.post("/api/chat", content=body, headers={**AS_USER, "Content-Type": "application/json"})

    assert response.status_code == 200
    assert route.calls.last.request.content == body


@pytest.mark.parametrize(
    ("method", "ask", "status"),
    [
        ("GET", {"params": {"message": "hi", "num_ctx": "1e8"}}, 403),
        ("GET", {"params": {"message": "hi", "num_ctx": "99999999.0"}}, 403),
        ("GET", {"params": {"message": "hi", "num_ctx": "8.193e3"}}, 403),
        ("GET", {"params": {"message": "hi", "num_ctx": "4096.5"}}, 422),
        ("POST", {"json": {"message": "hi", "num_ctx": 99999999.0}}, 403),
        ("POST", {"json": {"message": "hi", "num_ctx": 4096.5}}, 422),
    ],
    ids=["query-1e8", "query-float", "query-just-over", "query-fraction", "body-float", "body-fraction"],
)
async def test_minatos_own_routes_compare_num_ctx_as_a_number(
    keyed: Client, ollama: ServedOllama, method: str, ask: dict[str, Any], status: int
) -> None:
    """Whatever the spelling, the number it spells is what is capped; a fraction is refused."""
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await keyed.request(method, "/llama3.2", headers=AS_USER, **ask)

    assert response.status_code == status, response.text
    assert "num_ctx" in json.dumps(response.json())
    assert not route.called


# -- what a key may see and read -----------------------------------------------------------------


def _ps(*names: str) -> dict[str, Any]:
    return {"models": [{"name": name, "model": name, "size": 1, "digest": "d", "details": {}} for name in names]}


async def test_server_info_shows_a_scoped_key_only_its_models_also_among_the_loaded(
    settings: Settings, ollama: ServedOllama, tmp_path: Any
) -> None:
    ollama.get("/api/version").respond(200, json={"version": "0.12.4"})
    ollama.get("/api/ps", name="ps").respond(200, json=_ps("llama3.2:latest", "llava:7b"))
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[keys.narrow]\nkey = "{USER}"\nmodels = ["llama3.2"]\n')
    async for client in _client(settings, ollama, keys_file=str(keys), admin_keys=(ADMIN,)):
        await client.get("/models_list/", headers=AS_ADMIN)  # the pool learns what is loaded
        narrow = (await client.get("/", headers=AS_USER)).json()
        ready = (await client.get("/ready", headers=AS_USER)).json()
        wide = (await client.get("/", headers=AS_ADMIN)).json()

    assert narrow["ollama"]["backends"][0]["loaded"] == ["llama3.2:latest"]
    assert narrow["running"] == ["llama3.2:latest"]
    assert ready["backends"][0]["loaded"] == ["llama3.2:latest"]
    assert sorted(wide["ollama"]["backends"][0]["loaded"]) == ["llama3.2:latest", "llava:7b"]


async def test_an_open_readiness_probe_names_no_model(settings: Settings, ollama: ServedOllama) -> None:
    ollama.get("/api/version").respond(200, json={"version": "0.12.4"})
    ollama.get("/api/ps", name="ps").respond(200, json=_ps("llava:7b"))
    async for client in _client(settings, ollama, api_keys=(USER,), admin_keys=(ADMIN,), open_probes=True):
        await client.get("/models_list/", headers=AS_ADMIN)
        anonymous = await client.get("/ready")
        head = await client.head("/ready")

    assert anonymous.status_code == 200
    assert anonymous.json()["backends"][0].get("loaded", []) == []
    assert head.headers["content-length"] == str(len(anonymous.content))


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), (AS_USER, 403), (AS_ADMIN, 200), (AS_SCRAPER, 200)],
    ids=["no-key", "user", "admin", "metrics-key"],
)
async def test_metrics_need_an_admin_or_a_metrics_key(keyed: Client, headers: dict[str, str], status: int) -> None:
    response = await keyed.get("/metrics", headers=headers)

    assert response.status_code == status
    if status == 403:
        assert "MINATO_METRICS_KEYS" in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/llama3.2?message=hi"), ("GET", "/models_list/"), ("GET", "/ready"), ("POST", "/api/chat")],
)
async def test_a_metrics_key_opens_nothing_but_metrics(
    keyed: Client, ollama: ServedOllama, method: str, path: str
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await keyed.request(method, path, headers=AS_SCRAPER, json={"model": "llama3.2", "messages": []})

    assert response.status_code == 403
    assert "only read /metrics" in json.dumps(response.json())
    assert not route.called


async def test_metrics_stay_open_without_keys_and_with_open_probes(
    keyless: Client, settings: Settings, ollama: ServedOllama
) -> None:
    assert (await keyless.get("/metrics")).status_code == 200
    async for client in _client(settings, ollama, api_keys=(USER,), open_probes=True):
        assert (await client.get("/metrics")).status_code == 200


# -- deeply nested bodies ------------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    return b'{"model":"llama3.2","messages":[],"x":' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1_000, 100_000])
@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/show", "/v1/chat/completions", "/v1/messages"])
async def test_a_deeply_nested_door_body_is_a_400_in_the_doors_shape(
    keyed: Client, ollama: ServedOllama, path: str, depth: int
) -> None:
    route = ollama.post(path).respond(200, json={})

    response = await keyed.post(path, content=_nested(depth), headers={**AS_ADMIN, "Content-Type": "application/json"})

    assert response.status_code == 400, response.text
    assert str(MAX_JSON_DEPTH) in json.dumps(response.json())
    assert not route.called


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/llama3.2"), ("POST", "/stream/llama3.2"), ("PUT", "/chat/c1/system_prompt")]
)
async def test_a_deeply_nested_body_on_minatos_routes_is_a_422_naming_the_limit(
    keyed: Client, ollama: ServedOllama, method: str, path: str, depth: int
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())
    body = b'{"message":"hi","system_prompt":"be brief","x":' + b"[" * depth + b"]" * depth + b"}"

    response = await keyed.request(method, path, content=body, headers={**AS_USER, "Content-Type": "application/json"})

    assert response.status_code == 422, response.text
    assert response.json()["detail"] == [
        {"loc": ["body"], "msg": f"is nested deeper than {MAX_JSON_DEPTH} levels", "type": "value_error"}
    ]
    assert not route.called


async def test_a_body_nested_to_the_limit_is_decoded_as_usual(keyed: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await keyed.post(
        "/api/chat", content=_nested(MAX_JSON_DEPTH - 1), headers={**AS_USER, "Content-Type": "application/json"}
    )

    assert response.status_code == 200
    assert route.called


# -- the words of a refusal ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keep_alive", "words"),
    [
        ("0", "keep_alive 0: 0 unloads the model at once"),
        ("0.0", "keep_alive 0: 0 unloads the model at once"),
        ("-1", "keep_alive -1: a negative value keeps the model loaded forever"),
        ("0.5", "keep_alive 0.5: less than a second"),
        ("2h", "keep_alive 2h: that is longer than 1h (MINATO_USER_MAX_KEEP_ALIVE)"),
    ],
)
async def test_a_refused_keep_alive_is_said_plainly(
    keyed: Client, ollama: ServedOllama, keep_alive: str, words: str
) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await keyed.get("/llama3.2", params={"message": "hi", "keep_alive": keep_alive}, headers=AS_USER)

    assert response.status_code == 403
    assert response.json()["detail"].startswith(words), response.json()["detail"]
    assert "from 1 s to 1h" in response.json()["detail"]
