"""``POST /install/{model}`` (Ollama's pull) and ``GET /models_list/`` (Ollama's tags)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.support.payloads import (
    PULL_MANIFEST,
    PULL_SUCCESS,
    PULL_UNKNOWN,
    TAGS,
    ndjson,
    pull_progress,
    show,
    streamed,
)
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
NDJSON = {"accept": "application/x-ndjson"}


def lines_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def a_pull(*lines: dict[str, Any]) -> Any:
    """A side effect answering each pull with ``lines``, one upstream chunk per line."""
    return lambda _: streamed(*[ndjson(line) for line in lines])


FULL_PULL = (
    PULL_MANIFEST,
    pull_progress(total=200),
    pull_progress(total=200, completed=50),
    pull_progress(total=200, completed=200),
    {"status": "verifying sha256 digest"},
    {"status": "writing manifest"},
    PULL_SUCCESS,
)


async def test_install_waits_for_the_pull_and_answers_success(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/pull").mock(side_effect=a_pull(*FULL_PULL))

    response = await client.post("/install/llama3.2:1b")

    assert response.status_code == 200
    assert response.json() == {"status": "success", "model": "llama3.2:1b"}
    assert route.calls.last.request.content == b'{"model":"llama3.2:1b","stream":true}'


async def test_install_accepts_namespaced_and_hugging_face_models(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/pull").mock(side_effect=a_pull(*FULL_PULL))
    model = "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"

    response = await client.post(f"/install/{model}")

    assert response.json() == {"status": "success", "model": model}
    assert json.loads(route.calls.last.request.content) == {"model": model, "stream": True}


async def test_an_unknown_model_is_a_404_with_ollamas_reason(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/pull").mock(side_effect=a_pull(PULL_MANIFEST, PULL_UNKNOWN))

    response = await client.post("/install/no-such-model")

    assert response.status_code == 404
    assert response.json() == {"detail": "cannot pull 'no-such-model': pull model manifest: file does not exist"}
    assert json.loads(route.calls.last.request.content) == {"model": "no-such-model", "stream": True}


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        pytest.param({"stream": "true"}, {}, id="query"),
        pytest.param({}, NDJSON, id="accept-header"),
    ],
)
async def test_an_unknown_model_is_a_404_even_when_streaming(
    client: Client, ollama: ServedOllama, params: dict[str, str], headers: dict[str, str]
) -> None:
    route = ollama.post("/api/pull").mock(side_effect=a_pull(PULL_MANIFEST, PULL_UNKNOWN))

    response = await client.post("/install/nope", params=params, headers=headers)

    assert response.status_code == 404
    assert response.json() == {"detail": "cannot pull 'nope': pull model manifest: file does not exist"}
    assert route.called


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        pytest.param({"stream": "true"}, {}, id="query"),
        pytest.param({}, NDJSON, id="accept-header"),
    ],
)
async def test_streamed_install_relays_progress_with_a_percentage(
    client: Client, ollama: ServedOllama, params: dict[str, str], headers: dict[str, str]
) -> None:
    route = ollama.post("/api/pull").mock(side_effect=a_pull(*FULL_PULL))

    response = await client.post("/install/llama3.2", params=params, headers=headers)

    assert response.status_code == 200
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["cache-control"] == "no-cache"
    digest = "sha256:dde5aa3fc5ff"
    backend = {"backend": ollama.host}
    assert lines_of(response.text) == [
        {"status": "pulling manifest", **backend},
        {"status": "pulling dde5aa3fc5ff", "digest": digest, "total": 200, "percent": 0.0, **backend},
        {"status": "pulling dde5aa3fc5ff", "digest": digest, "total": 200, "completed": 50, "percent": 25.0, **backend},
        {
            "status": "pulling dde5aa3fc5ff",
            "digest": digest,
            "total": 200,
            "completed": 200,
            "percent": 100.0,
            **backend,
        },
        {"status": "verifying sha256 digest", **backend},
        {"status": "writing manifest", **backend},
        {"status": "success"},
    ]
    assert json.loads(route.calls.last.request.content) == {"model": "llama3.2", "stream": True}


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        pytest.param({"stream": "true"}, {}, id="query"),
        pytest.param({}, NDJSON, id="accept-header"),
    ],
)
async def test_streamed_install_is_labelled_as_ndjson(
    client: Client, ollama: ServedOllama, params: dict[str, str], headers: dict[str, str]
) -> None:
    route = ollama.post("/api/pull").mock(side_effect=a_pull(*FULL_PULL))

    response = await client.post("/install/llama3.2", params=params, headers=headers)

    assert route.called
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"


async def test_the_percentage_is_rounded_to_one_decimal(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/pull").mock(side_effect=a_pull(PULL_MANIFEST, pull_progress(total=3, completed=1), PULL_SUCCESS))

    response = await client.post("/install/llama3.2", params={"stream": "true"})

    assert lines_of(response.text)[1]["percent"] == 33.3


async def test_an_error_after_progress_ends_the_stream_with_an_error_line(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/pull").mock(
        side_effect=a_pull(
            PULL_MANIFEST, pull_progress(total=200, completed=50), {"error": "write /models: no space left on device"}
        )
    )

    response = await client.post("/install/llama3.2", params={"stream": "true"})

    assert response.status_code == 200
    lines = lines_of(response.text)
    assert lines[1]["completed"] == 50
    assert lines[-1] == {"status": "error", "error": "pull failed: write /models: no space left on device"}
    assert len(lines) == 3


async def test_progress_arriving_together_with_an_error_is_still_relayed(client: Client, ollama: ServedOllama) -> None:
    body = ndjson(PULL_MANIFEST, pull_progress(total=200, completed=50), {"error": "disk full"})
    ollama.post("/api/pull").respond(200, content=body)

    response = await client.post("/install/llama3.2", params={"stream": "true"})

    lines = lines_of(response.text)
    assert lines[:2] == [
        {"status": "pulling manifest", "backend": ollama.host},
        {
            "status": "pulling dde5aa3fc5ff",
            "digest": "sha256:dde5aa3fc5ff",
            "total": 200,
            "completed": 50,
            "percent": 25.0,
            "backend": ollama.host,
        },
    ]
    assert lines[-1] == {"status": "error", "error": "pull failed: disk full"}


async def test_an_error_after_progress_without_streaming_is_a_502(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/pull").mock(
        side_effect=a_pull(PULL_MANIFEST, pull_progress(completed=50), {"error": "disk full"})
    )

    response = await client.post("/install/llama3.2")

    assert response.status_code == 502
    assert response.json() == {"detail": "pull failed: disk full"}
    assert route.called


async def test_install_forgets_cached_capabilities_of_the_model(client: Client, ollama: ServedOllama) -> None:
    show_route = ollama.post("/api/show").respond(200, json=show(["completion"]))
    ollama.post("/api/pull").mock(side_effect=a_pull(*FULL_PULL))
    png = ("images", ("a.png", bytes.fromhex("89504e470d0a1a0a00"), "image/png"))

    before = await client.post("/vision/gemma3", params={"message": "hi"}, files=[png])
    await client.post("/install/gemma3")
    after = await client.post("/vision/gemma3", params={"message": "hi"}, files=[png])

    assert (before.status_code, after.status_code) == (400, 400)
    assert show_route.call_count == 2


async def test_install_with_an_invalid_name_never_reaches_ollama(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/pull").mock(side_effect=a_pull(*FULL_PULL))

    response = await client.post("/install/..%2Fetc")

    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["path", "model_name"]]
    assert not route.called


async def test_install_with_ollama_down_is_a_503(client: Client, ollama: ServedOllama) -> None:
    ollama.down()

    response = await client.post("/install/llama3.2")

    assert response.status_code == 503
    assert ollama.url in response.json()["detail"]


async def test_models_list_flattens_ollamas_tags(client: Client, ollama: ServedOllama) -> None:
    route = ollama.get("/api/tags").respond(200, json=TAGS)

    response = await client.get("/models_list/")

    assert response.status_code == 200
    assert response.json() == {
        "models_list": [
            {
                "name": "llama3.2:latest",
                "size": 2019393189,
                "size_mb": 1925.84,
                "modified_at": "2025-05-04T17:37:44.706015396-07:00",
                "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "3.2B",
                "quantization_level": "Q4_K_M",
                "loaded": False,
                "backends": [ollama.host],
                "capabilities": ["completion", "tools"],
            }
        ]
    }
    assert route.calls.last.request.method == "GET"


#: Ollama 0.30 and later list each model's capabilities in /api/tags; older versions only in /api/show.
EMBEDDER = {**TAGS["models"][0], "name": "nomic-embed-text:latest", "model": "nomic-embed-text:latest"}


async def test_models_list_gives_each_models_capabilities_as_ollamas_list_has_them(
    client: Client, ollama: ServedOllama
) -> None:
    ollama.get("/api/tags").respond(
        200, json={"models": [TAGS["models"][0], {**EMBEDDER, "capabilities": ["embedding"]}]}
    )
    shown = ollama.post("/api/show").respond(200, json=show(["completion"]))

    response = await client.get("/models_list/")

    assert [(m["name"], m["capabilities"]) for m in response.json()["models_list"]] == [
        ("llama3.2:latest", ["completion", "tools"]),
        ("nomic-embed-text:latest", ["embedding"]),
    ]
    assert not shown.called, "the list had them: nothing to ask"


async def test_an_ollama_that_does_not_list_capabilities_is_asked_once_per_model(
    client: Client, ollama: ServedOllama
) -> None:
    older = [
        {key: value for key, value in entry.items() if key != "capabilities"} for entry in (TAGS["models"][0], EMBEDDER)
    ]
    ollama.get("/api/tags").respond(200, json={"models": older})

    def answer(request: httpx.Request) -> httpx.Response:
        model = json.loads(request.content)["model"]
        return httpx.Response(200, json=show(["embedding"] if model.startswith("nomic") else ["completion", "vision"]))

    shown = ollama.post("/api/show").mock(side_effect=answer)

    first = await client.get("/models_list/")
    again = await client.get("/models_list/")

    expected = [("llama3.2:latest", ["completion", "vision"]), ("nomic-embed-text:latest", ["embedding"])]
    assert [(m["name"], m["capabilities"]) for m in first.json()["models_list"]] == expected
    assert [(m["name"], m["capabilities"]) for m in again.json()["models_list"]] == expected
    assert shown.call_count == 2, "kept for MINATO_CAPABILITIES_TTL: a second list asks nothing"


async def test_a_model_ollama_cannot_describe_is_listed_with_no_capabilities(
    client: Client, ollama: ServedOllama
) -> None:
    older = {key: value for key, value in TAGS["models"][0].items() if key != "capabilities"}
    ollama.get("/api/tags").respond(200, json={"models": [older]})
    ollama.post("/api/show").respond(500, json={"error": "something went wrong"})

    response = await client.get("/models_list/")

    assert response.status_code == 200
    assert response.json()["models_list"][0]["capabilities"] == []


async def test_models_list_falls_back_to_family_and_model(client: Client, ollama: ServedOllama) -> None:
    ollama.get("/api/tags").respond(
        200,
        json={
            "models": [
                {
                    "model": "tiny:latest",
                    "size": 1048576,
                    "digest": "d" * 64,
                    "details": {"family": "qwen3", "families": None},
                },
                {"name": "bare:latest", "size": 1, "details": {}},
            ]
        },
    )

    response = await client.get("/models_list/")

    first, second = response.json()["models_list"]
    assert first["name"] == "tiny:latest"
    assert first["size_mb"] == 1.0
    assert first["families"] == ["qwen3"]
    assert second["families"] == []
    assert second["size_mb"] == 0.0
    assert second["family"] == ""


async def test_an_empty_model_list_is_an_empty_list(client: Client, ollama: ServedOllama) -> None:
    route = ollama.get("/api/tags").respond(200, json={"models": []})

    response = await client.get("/models_list/")

    assert response.status_code == 200
    assert response.json() == {"models_list": []}
    assert route.called


async def test_models_list_with_ollama_down_is_a_503(client: Client, ollama: ServedOllama) -> None:
    ollama.down()

    response = await client.get("/models_list/")

    assert response.status_code == 503
    assert ollama.url in response.json()["detail"]
