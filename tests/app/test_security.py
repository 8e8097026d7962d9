"""Access, roles, rate limits, CORS, backpressure and the safe-by-default rule."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from minato.settings import Settings
from minato.state.memory import LocalRateLimiter
from minato.web.app import create_app
from tests.support.logs import captured
from tests.support.payloads import TAGS, catalogue, chat_answer, show
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
USER = "user-key-123"
ADMIN = "admin-key-456"


@pytest.fixture(name="secured")
async def fx_secured(settings: Settings, ollama: ServedOllama) -> AsyncIterator[Client]:
    """Minato with one user key and one admin key."""
    configured = msgspec.structs.replace(settings, api_keys=(USER,), admin_keys=(ADMIN,))
    app = create_app(configured)
    async with AsyncTestClient(app=app) as client:
        yield client


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Authorization": f"Key {USER}"}, id="seed-key-scheme"),
        pytest.param({"Authorization": f"Bearer {USER}"}, id="bearer"),
        pytest.param({"X-API-Key": USER}, id="x-api-key"),
        pytest.param({"Authorization": f"Key {ADMIN}"}, id="admin-key-can-generate-too"),
    ],
)
async def test_a_valid_key_in_any_accepted_form_is_let_through(
    secured: Client, ollama: ServedOllama, headers: dict[str, str]
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await secured.get("/llama3.2", params={"message": "hi"}, headers=headers)

    assert response.status_code == 200
    assert route.called
    assert "authorization" not in route.calls.last.request.headers, "keys never travel to Ollama"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-key"),
        pytest.param({"Authorization": "Key wrong"}, id="wrong-key"),
        pytest.param({"Authorization": f"Basic {USER}"}, id="unsupported-scheme"),
        pytest.param({"X-API-Key": USER[:-1]}, id="prefix-of-a-key"),
    ],
)
async def test_a_missing_or_wrong_key_is_a_401_with_www_authenticate(
    secured: Client, ollama: ServedOllama, headers: dict[str, str]
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await secured.get("/llama3.2", params={"message": "hi"}, headers=headers)

    assert response.status_code == 401
    assert "Key" in response.headers["www-authenticate"]
    assert "detail" in response.json()
    assert not route.called


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/install/llama3.2"), ("POST", "/load/llama3.2"), ("POST", "/unload/llama3.2"), ("DELETE", "/models/x")],
)
async def test_a_user_key_on_an_admin_route_is_a_403(
    secured: Client, ollama: ServedOllama, method: str, path: str
) -> None:
    response = await secured.request(method, path, headers={"Authorization": f"Key {USER}"})

    assert response.status_code == 403
    assert "admin" in response.json()["detail"]
    assert not [call for call in ollama.calls if call.request.url.path != "/api/ps"]


async def test_an_admin_key_may_delete_a_model(secured: Client, ollama: ServedOllama) -> None:
    route = ollama.delete("/api/delete").respond(200)

    response = await secured.delete("/models/old:1b", headers={"X-API-Key": ADMIN})

    assert response.status_code == 200
    assert route.called


async def test_health_and_docs_need_no_key_but_ready_and_metrics_do(secured: Client, ollama: ServedOllama) -> None:
    ollama.get("/api/version").respond(200, json={"version": "1"})

    assert (await secured.get("/health")).status_code == 200
    assert (await secured.get("/docs/openapi.json")).status_code == 200
    assert (await secured.get("/ready")).status_code == 401
    assert (await secured.get("/metrics")).status_code == 401
    assert (await secured.get("/ready", headers={"X-API-Key": USER})).status_code == 200


async def test_open_probes_serve_ready_and_metrics_without_a_key(settings: Settings, ollama: ServedOllama) -> None:
    ollama.get("/api/version").respond(200, json={"version": "1"})
    configured = msgspec.structs.replace(settings, api_keys=(USER,), open_probes=True)
    app = create_app(configured)
    async with AsyncTestClient(app=app) as client:
        assert (await client.get("/ready")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/models_list/")).status_code == 401


async def test_keys_never_reach_the_logs_only_a_fingerprint(secured: Client, ollama: ServedOllama) -> None:
    ollama.get("/api/tags").respond(200, json=TAGS)

    with captured() as logs:
        await secured.get("/models_list/", headers={"Authorization": f"Bearer {USER}"})

    assert USER not in repr(logs)
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    assert line["key"] == hashlib.sha256(USER.encode()).hexdigest()[:12]


async def test_a_key_over_its_rate_limit_gets_a_429_with_retry_after(settings: Settings, ollama: ServedOllama) -> None:
    ollama.get("/api/tags").respond(200, json=TAGS)
    configured = msgspec.structs.replace(settings, api_keys=(USER, "other"), rate_limit_per_minute=2)
    app = create_app(configured)
    async with AsyncTestClient(app=app) as client:
        statuses = [(await client.get("/models_list/", headers={"X-API-Key": USER})).status_code for _ in range(3)]
        limited = await client.get("/models_list/", headers={"X-API-Key": USER})
        other = await client.get("/models_list/", headers={"X-API-Key": "other"})

    assert statuses == [200, 200, 429]
    assert int(limited.headers["retry-after"]) >= 1
    assert other.status_code == 200, "limits are per key"


async def test_the_rate_limiter_fails_closed(
    settings: Settings, ollama: ServedOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    route = ollama.get("/api/tags").respond(200, json=TAGS)

    async def broken(self: LocalRateLimiter, key: str, per_minute: int) -> float:
        raise RuntimeError("limiter store unreachable")

    monkeypatch.setattr(LocalRateLimiter, "check", broken)
    configured = msgspec.structs.replace(settings, api_keys=(USER,), rate_limit_per_minute=100)
    app = create_app(configured)
    async with AsyncTestClient(app=app) as client:
        response = await client.get("/models_list/", headers={"X-API-Key": USER})

    assert response.status_code == 429
    assert not route.called


async def test_cors_answers_preflights_only_for_configured_origins(settings: Settings, ollama: ServedOllama) -> None:
    configured = msgspec.structs.replace(settings, cors_origins=("https://app.example",))
    app = create_app(configured)
    preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    async with AsyncTestClient(app=app) as client:
        allowed = await client.options("/llama3.2", headers={"Origin": "https://app.example", **preflight})
        refused = await client.options("/llama3.2", headers={"Origin": "https://evil.example", **preflight})

    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in refused.headers


async def test_a_browser_sdks_preflight_to_a_door_is_answered(settings: Settings, ollama: ServedOllama) -> None:
    # Keys are configured: a preflight carries none, and must still be answered.
    configured = msgspec.structs.replace(settings, cors_origins=("https://app.example",), api_keys=(USER,))
    app = create_app(configured)
    asked = "authorization, content-type, x-stainless-os, x-stainless-retry-count, anthropic-version"
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": asked}
    async with AsyncTestClient(app=app) as client:
        openai = await client.options("/v1/chat/completions", headers={"Origin": "https://app.example", **preflight})

    assert openai.status_code in {200, 204}
    allowed = {name.strip().lower() for name in openai.headers["access-control-allow-headers"].split(",")}
    assert {"x-stainless-os", "x-stainless-retry-count", "anthropic-version", "authorization"} <= allowed


async def test_cors_is_off_by_default(client: Client) -> None:
    response = await client.get("/health", headers={"Origin": "https://app.example"})

    assert "access-control-allow-origin" not in response.headers


async def test_an_over_long_query_string_is_a_414_before_anything_else(
    settings: Settings, ollama: ServedOllama
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())
    limited = msgspec.structs.replace(settings, max_query_chars=1000)
    app = create_app(limited)
    async with AsyncTestClient(app=app) as client:
        response = await client.get("/llama3.2", params={"message": "x" * 1000})

    assert response.status_code == 414
    assert "query string" in response.json()["detail"]
    assert not route.called


async def test_a_path_over_8_kib_is_a_414_and_a_long_query_is_not_a_long_path(
    settings: Settings, ollama: ServedOllama
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())
    roomy = msgspec.structs.replace(settings, max_message_chars=10_000)
    app = create_app(roomy)
    async with AsyncTestClient(app=app) as client:
        long_path = await client.get("/" + "m" * 8192, params={"message": "hi"})
        longest_path = await client.get("/" + "m" * 8191)
        long_query = await client.get("/llama3.2", params={"message": "x" * 9000})

    assert long_path.status_code == 414
    assert long_path.json() == {"detail": "the request path is longer than 8192 bytes"}
    assert longest_path.status_code == 422, "8,192 bytes with its slash: routed (and missing its message)"
    assert long_query.status_code == 200
    assert route.call_count == 1


# -- backpressure ----------------------------------------------------------------------------


async def test_generations_give_their_slot_back_when_they_end(settings: Settings, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    configured = msgspec.structs.replace(settings, max_generations=1, max_queue=0)
    app = create_app(configured)
    async with AsyncTestClient(app=app) as client:
        # One slot and no queue: each request succeeds only if the one before gave its slot back.
        for path in ("/llama3.2", "/stream/llama3.2", "/llama3.2", "/stream/llama3.2"):
            assert (await client.get(path, params={"message": "hi"})).status_code == 200


# -- safe by default ---------------------------------------------------------------------------


def _public_paths(app: Litestar) -> list[str]:
    """Every route a request may reach without a key, found by handler, never assumed by path."""
    return sorted(
        {
            route.path
            for route in app.routes
            for handler in getattr(route, "route_handlers", [])
            if handler.opt.get("public") and "{" not in route.path
        }
    )


async def test_the_exempt_routes_are_exactly_health_the_docs_and_the_playground(
    settings: Settings, ollama: ServedOllama
) -> None:
    app = create_app(
        msgspec.structs.replace(settings, api_keys=(USER,)),
    )

    assert _public_paths(app) == [
        "/docs",
        "/docs/openapi.json",
        "/docs/scalar",
        "/health",
        "/playground",
    ]
    async with AsyncTestClient(app=app) as client:
        for path in _public_paths(app):
            assert (await client.get(path)).status_code == 200, path


@pytest.mark.parametrize(
    "path",
    [
        "/docsanything?session=alice-1&message=hi",
        "/docs-x/llama3.2:1b?message=hi",
        "/%64ocs1?message=hi",
        "/docs1?message=hi",
        "/DOCS?message=hi",
        "/docs/../llama3.2?message=hi",
        "/stream/docs?message=hi",
        "/healthz?message=hi",
        "/health/../llama3.2?message=hi",
        "/docs%2F..%2Fllama3.2?message=hi",
        "/playgrounds?message=hi",
        "/playground%2F..%2Fllama3.2?message=hi",
        "/stream/playground?message=hi",
    ],
)
async def test_look_alikes_of_exempt_paths_need_a_key(secured: Client, ollama: ServedOllama, path: str) -> None:
    # Every look-alike is also an installed model, so only the key check can stop it.
    looks = ("docsanything", "docs-x/llama3.2:1b", "docs1", "docs", "healthz", "llama3.2", "playgrounds", "playground")
    ollama.get("/api/tags", name="tags").respond(200, json=catalogue(*looks))
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await secured.get(path)

    # 401, or the docs router's own 404 for a page it does not have: never an answer without a key.
    assert response.status_code in {401, 404}, response.text
    assert response.status_code == 401 or "llama3.2" not in response.text
    assert not chat.called


@pytest.mark.parametrize(
    ("keep_alive", "allowed"),
    [
        pytest.param("1", True, id="one-second"),
        pytest.param("10m", True, id="ten-minutes"),
        pytest.param("3600", True, id="exactly-the-limit-in-seconds"),
        pytest.param("1h", True, id="exactly-the-limit"),
        pytest.param("0", False, id="zero-unloads"),
        pytest.param("0s", False, id="zero-duration"),
        pytest.param("0.5", False, id="under-a-second"),
        pytest.param("-1", False, id="negative-pins"),
        pytest.param("-5m", False, id="negative-duration"),
        pytest.param("61m", False, id="over-the-limit"),
        pytest.param("3601", False, id="one-second-over"),
    ],
)
async def test_a_user_keys_keep_alive_must_be_from_one_second_to_the_limit(
    secured: Client, ollama: ServedOllama, keep_alive: str, allowed: bool
) -> None:
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await secured.get(
        "/llama3.2", params={"message": "hi", "keep_alive": keep_alive}, headers={"X-API-Key": USER}
    )

    if allowed:
        assert response.status_code == 200
    else:
        assert response.status_code == 403
        assert "admin key" in response.json()["detail"]
        assert not chat.called


@pytest.mark.parametrize("keep_alive", ["0", "-1", "24h"])
async def test_an_admin_key_may_unload_pin_or_keep_a_model_for_long(
    secured: Client, ollama: ServedOllama, keep_alive: str
) -> None:
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await secured.get(
        "/stream/llama3.2", params={"message": "hi", "keep_alive": keep_alive}, headers={"X-API-Key": ADMIN}
    )

    assert response.status_code == 200
    assert chat.called


async def test_the_user_keep_alive_limit_is_a_setting(settings: Settings, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    configured = msgspec.structs.replace(settings, api_keys=(USER,), user_max_keep_alive="10m")
    app = create_app(configured)

    async with AsyncTestClient(app=app) as client:
        ok = await client.get("/llama3.2", params={"message": "hi", "keep_alive": "10m"}, headers={"X-API-Key": USER})
        over = await client.get("/llama3.2", params={"message": "hi", "keep_alive": "11m"}, headers={"X-API-Key": USER})

    assert ok.status_code == 200
    assert over.status_code == 403
    assert "10m (MINATO_USER_MAX_KEEP_ALIVE)" in over.json()["detail"]


@pytest.mark.parametrize(
    ("num_ctx", "allowed"), [("8192", True), ("131072", True), ("131073", False), ("2147483647", False)]
)
async def test_a_user_keys_num_ctx_is_bounded_by_the_models_own_context(
    secured: Client, ollama: ServedOllama, num_ctx: str, allowed: bool
) -> None:
    ollama.post("/api/show").respond(200, json=show(["completion"]))  # llama.context_length: 131072
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await secured.get("/llama3.2", params={"message": "hi", "num_ctx": num_ctx}, headers={"X-API-Key": USER})

    assert response.status_code == (200 if allowed else 403)
    assert chat.called is allowed
    if not allowed:
        assert "131072 (the model's context length)" in response.json()["detail"]


async def test_an_admin_key_may_ask_for_any_num_ctx(secured: Client, ollama: ServedOllama) -> None:
    show_route = ollama.post("/api/show").respond(200, json=show(["completion"]))
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await secured.get(
        "/llama3.2", params={"message": "hi", "num_ctx": "2147483647"}, headers={"X-API-Key": ADMIN}
    )

    assert response.status_code == 200
    assert chat.called
    assert not show_route.called, "no lookup is needed for an admin key"


async def test_the_user_num_ctx_cap_can_be_set_by_the_operator(settings: Settings, ollama: ServedOllama) -> None:
    show_route = ollama.post("/api/show").respond(200, json=show(["completion"]))
    ollama.post("/api/chat").respond(200, json=chat_answer())
    configured = msgspec.structs.replace(settings, api_keys=(USER,), user_max_num_ctx=4096)
    app = create_app(configured)

    async with AsyncTestClient(app=app) as client:
        ok = await client.get("/llama3.2", params={"message": "hi", "num_ctx": "4096"}, headers={"X-API-Key": USER})
        over = await client.get("/llama3.2", params={"message": "hi", "num_ctx": "4097"}, headers={"X-API-Key": USER})

    assert ok.status_code == 200
    assert over.status_code == 403
    assert "MINATO_USER_MAX_NUM_CTX" in over.json()["detail"]
    assert not show_route.called
