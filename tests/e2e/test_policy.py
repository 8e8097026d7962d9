"""What a key may do, tried against Minato as a real process in front of the stand-in: cloud models on
every route, ``num_ctx`` spelled as a float, a quota dodged by hanging up, bodies nested too deep,
what ``GET /`` and ``/metrics`` show to whom."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.servers import MinatoServer, start_minato, stop_minato
from tests.support.standin.process import StandInProcess

pytestmark = pytest.mark.e2e

USER = "e2e-policy-user"
ADMIN = "e2e-policy-admin"
SCRAPER = "e2e-policy-scrape"
METERED = "e2e-policy-metered"
NARROW = "e2e-policy-narrow"
CLOUD = "gpt-oss:20b-cloud"
QUOTA = 30
#: A stream of 400 tokens, 15 ms apart: long enough to leave it after a few.
LONG_STREAM = "standin/paced:400x15"


@pytest.fixture(scope="module")
def cloud_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandInProcess]:
    """A stand-in with a cloud model installed (and loaded), which it answers like any other."""
    standin = StandInProcess("--models", f"llama3.2:1b,llava:7b,{CLOUD}", "--loaded", f"llama3.2:1b,llava:7b,{CLOUD}")
    yield standin
    standin.stop()


@pytest.fixture(scope="module")
def keyed(cloud_standin: StandInProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinatoServer]:
    """Minato with a user key (num_ctx capped at 8192), a key for one model, a key with a quota of 30
    tokens, an admin key and a metrics key."""
    directory = tmp_path_factory.mktemp("policy")
    keys = directory / "keys.toml"
    keys.write_text(
        f'[keys.narrow]\nkey = "{NARROW}"\nmodels = ["llama3.2:1b"]\n\n'
        f'[keys.metered]\nkey = "{METERED}"\ntokens_per_day = {QUOTA}\n'
    )
    server = start_minato(
        cloud_standin.url,
        directory / "minato.log",
        api_keys=USER,
        admin_keys=ADMIN,
        metrics_keys=SCRAPER,
        keys_file=str(keys),
        user_max_num_ctx="8192",
    )
    yield server
    stop_minato(server)


@pytest.fixture(scope="module")
def keyless(cloud_standin: StandInProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinatoServer]:
    server = start_minato(cloud_standin.url, tmp_path_factory.mktemp("keyless") / "minato.log")
    yield server
    stop_minato(server)


@pytest.fixture
def seen(cloud_standin: StandInProcess) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """What the stand-in was asked since the test began (its probes left out)."""
    with httpx.Client(base_url=cloud_standin.url, timeout=10) as client:
        client.delete("/_standin/requests")

        def requests() -> list[dict[str, Any]]:
            listed: list[dict[str, Any]] = client.get("/_standin/requests").json()
            return [r for r in listed if r["path"] not in {"/api/version", "/api/tags", "/api/ps"}]

        yield requests


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _model_routes(server: MinatoServer) -> list[tuple[str, str]]:
    """Every route of the running server's OpenAPI document whose path names a model."""
    document = httpx.get(f"{server.url}/docs/openapi.json", timeout=30).json()
    return sorted(
        (method.upper(), path)
        for path, operations in document["paths"].items()
        if "{model_name}" in path
        for method in operations
        if method in {"get", "post", "put", "delete"}
    )


def _ask(client: httpx.Client, method: str, path: str, model: str, headers: dict[str, str]) -> httpx.Response:
    url = path.replace("{model_name}", model)
    if "vision" in path:
        return client.post(url, params={"message": "what is it?"}, files={"images": b"x"}, headers=headers)
    if method == "POST" and path in {"/{model_name}", "/stream/{model_name}"}:
        return client.post(url, json={"message": "hi"}, headers=headers)
    params = {"message": "hi"} if method == "GET" else {}
    return client.request(method, url, params=params, headers=headers)


# -- cloud models --------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["keyless", "admin"])
def test_no_route_runs_a_cloud_model(
    request: pytest.FixtureRequest, who: str, seen: Callable[[], list[dict[str, Any]]]
) -> None:
    server: MinatoServer = request.getfixturevalue("keyless" if who == "keyless" else "keyed")
    headers = _as(ADMIN) if who == "admin" else {}
    routes = _model_routes(server)
    answers = {}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for method, path in routes:
            for model in (CLOUD, "kimi-k2:1t-cloud"):
                answers[method, path, model] = _ask(client, method, path, model, headers)
        door = client.post("/api/chat", json={"model": CLOUD, "messages": []}, headers=headers)

    assert len(routes) >= 11, routes
    refused = {key: response.status_code for key, response in answers.items()}
    assert set(refused.values()) == {403}, refused
    assert all("MINATO_ALLOW_CLOUD" in r.json()["detail"] for r in answers.values())
    assert door.status_code == 403
    assert not [r for r in seen() if CLOUD in json.dumps(r)], "a cloud model reached Ollama"


# -- num_ctx written as a float ------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["99999999.0", "1e8", "8193.0"])
def test_a_user_key_cannot_pass_the_context_cap_with_a_float(
    keyed: MinatoServer, seen: Callable[[], list[dict[str, Any]]], spelling: str
) -> None:
    body = f'{{"model":"llama3.2:1b","messages":[{{"role":"user","content":"hi"}}],"options":{{"num_ctx":{spelling}}}}}'

    response = httpx.post(
        f"{keyed.url}/api/chat",
        content=body,
        headers={**_as(USER), "Content-Type": "application/json"},
        timeout=30,
    )

    assert response.status_code == 403
    assert "num_ctx" in response.json()["error"]
    assert not [r for r in seen() if r["path"] == "/api/chat"]


def test_a_fractional_num_ctx_is_a_400_in_ollamas_shape(keyed: MinatoServer) -> None:
    body = b'{"model":"llama3.2:1b","messages":[],"options":{"num_ctx":4096.5}}'

    response = httpx.post(
        f"{keyed.url}/api/chat", content=body, headers={**_as(ADMIN), "Content-Type": "application/json"}, timeout=30
    )

    assert response.status_code == 400
    assert response.json() == {"error": 'option "num_ctx" must be a whole number, not 4096.5'}


# -- a quota dodged by hanging up ----------------------------------------------------------------


@pytest.fixture
def metered(standin_url: str, tmp_path: Path) -> Iterator[MinatoServer]:
    """Minato, for one test, with a key whose quota is 30 tokens a day (in front of the stand-in whose
    scripted models include long paced streams)."""
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[keys.metered]\nkey = "{METERED}"\ntokens_per_day = {QUOTA}\n')
    server = start_minato(standin_url, tmp_path / "minato.log", keys_file=str(keys))
    yield server
    stop_minato(server)


def _leave_early(server: MinatoServer, method: str, path: str, **ask: Any) -> tuple[int, int]:
    """Open a stream, read a few of its frames, hang up; the status and the frames read."""
    frames = 0
    with (
        httpx.Client(base_url=server.url, timeout=30, headers=_as(METERED)) as client,
        client.stream(method, path, **ask) as response,
    ):
        if response.status_code != 200:
            return response.status_code, 0
        for line in response.iter_lines():
            frames += bool(line.strip())
            if frames >= 8:
                break
    return 200, frames


@pytest.mark.parametrize(
    ("method", "path", "ask"),
    [
        ("GET", f"/stream/{LONG_STREAM}", {"params": {"message": "hi"}, "headers": {"Accept": "application/x-ndjson"}}),
        ("POST", "/api/chat", {"json": {"model": LONG_STREAM, "messages": [{"role": "user", "content": "hi"}]}}),
        (
            "POST",
            "/v1/chat/completions",
            {"json": {"model": LONG_STREAM, "stream": True, "messages": [{"role": "user", "content": "hi"}]}},
        ),
    ],
    ids=["minato", "native", "openai"],
)
def test_hanging_up_does_not_dodge_the_token_quota(
    metered: MinatoServer, method: str, path: str, ask: dict[str, Any]
) -> None:
    outcomes = [_leave_early(metered, method, path, **ask) for _ in range(10)]

    statuses = [status for status, _ in outcomes]
    read = sum(frames for _, frames in outcomes)
    assert 429 in statuses, f"never refused after reading {read} frames: {outcomes}"
    served = statuses.index(429)
    assert served >= 1
    assert all(status == 429 for status in statuses[served:]), statuses
    # Each answer is charged at least the 8 tokens its client read, so the fifth cannot start.
    assert served <= 4, outcomes


def test_an_answer_is_capped_at_what_the_quota_has_left(metered: MinatoServer) -> None:
    with httpx.Client(base_url=metered.url, timeout=30, headers=_as(METERED)) as client:
        first = client.get(f"/{LONG_STREAM.replace('400x15', '400x1')}", params={"message": "hi"})
        second = client.get("/llama3.2:1b", params={"message": "hi"})

    assert first.status_code == 200
    assert first.json()["stats"]["eval_count"] == QUOTA, "one answer never passes the quota"
    assert first.json()["done_reason"] == "length"
    assert second.status_code == 429


# -- bodies nested too deep ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "key"),
    [
        ("POST", "/api/chat", 400, "error"),
        ("POST", "/v1/chat/completions", 400, "error"),
        ("POST", "/v1/messages", 400, "error"),
        ("POST", "/llama3.2:1b", 422, "detail"),
        ("POST", "/stream/llama3.2:1b", 422, "detail"),
        ("PUT", "/chat/deep/system_prompt", 422, "detail"),
    ],
)
def test_a_deeply_nested_body_is_a_4xx_never_a_500(
    keyed: MinatoServer, method: str, path: str, status: int, key: str
) -> None:
    depth = 5_000
    body = b'{"model":"llama3.2:1b","message":"hi","x":' + b"[" * depth + b"]" * depth + b"}"
    before = len(keyed.log_lines())

    response = httpx.request(
        method, keyed.url + path, content=body, headers={**_as(ADMIN), "Content-Type": "application/json"}, timeout=30
    )

    assert response.status_code == status
    assert "128" in json.dumps(response.json()[key])
    logged = "\n".join(keyed.log_lines()[before:])
    assert "Traceback" not in logged
    assert "RecursionError" not in logged


# -- what a key may see and read -----------------------------------------------------------------


def test_server_info_shows_a_scoped_key_only_its_loaded_models(keyed: MinatoServer) -> None:
    narrow = httpx.get(f"{keyed.url}/", headers=_as(NARROW), timeout=30).json()
    admin = httpx.get(f"{keyed.url}/", headers=_as(ADMIN), timeout=30).json()

    assert narrow["ollama"]["backends"][0].get("loaded", []) == ["llama3.2:1b"]
    assert narrow["running"] == ["llama3.2:1b"]
    assert {"llama3.2:1b", "llava:7b", CLOUD} <= set(admin["ollama"]["backends"][0]["loaded"])


@pytest.mark.parametrize(
    ("key", "status"), [(None, 401), (USER, 403), (NARROW, 403), (METERED, 403), (ADMIN, 200), (SCRAPER, 200)]
)
def test_metrics_name_every_key_so_only_an_admin_or_a_metrics_key_reads_them(
    keyed: MinatoServer, key: str | None, status: int
) -> None:
    response = httpx.get(f"{keyed.url}/metrics", headers=_as(key) if key else {}, timeout=30)

    assert response.status_code == status
    if status == 200:
        assert "minato_requests_total" in response.text


def test_a_metrics_key_opens_nothing_else(keyed: MinatoServer, seen: Callable[[], list[dict[str, Any]]]) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30, headers=_as(SCRAPER)) as client:
        answers = [
            client.get("/llama3.2:1b", params={"message": "hi"}),
            client.get("/models_list/"),
            client.post("/api/chat", json={"model": "llama3.2:1b", "messages": []}),
            client.get("/v1/models"),
        ]

    assert [a.status_code for a in answers] == [403, 403, 403, 403]
    assert not [r for r in seen() if r["path"] == "/api/chat"]
