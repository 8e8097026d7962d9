"""Model lifecycle, server info and the generation parameters beyond the seed."""

from __future__ import annotations

import datetime
import json
import re

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from minato.settings import Settings
from minato.web.app import create_app
from tests.support.payloads import TAGS, chat_answer, chat_done, ndjson, not_found, show
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]


def _ps_entry(name: str, expires_at: str, context_length: int = 4096) -> dict[str, object]:
    return {
        "name": name,
        "model": name,
        "size": 5137025024,
        "digest": "2ae6f6dd" * 8,
        "details": TAGS["models"][0]["details"],
        "expires_at": expires_at,
        "size_vram": 5137025024,
        "context_length": context_length,
    }


def _soon(minutes: int = 30) -> str:
    moment = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(minutes=minutes)
    return moment.isoformat().replace("+00:00", "Z")


FOREVER = "2318-08-23T11:04:55.123456789-07:00"
LOADED = {"model": "llama3.2", "created_at": "x", "response": "", "done": True, "done_reason": "load"}


# -- load / unload / delete -------------------------------------------------------------------


async def test_load_sends_an_empty_generate_and_answers_with_the_running_status(
    client: Client, ollama: ServedOllama
) -> None:
    generate = ollama.post("/api/generate").respond(200, json=LOADED)
    ollama["ps"].respond(200, json={"models": [_ps_entry("llama3.2:latest", FOREVER, 8192)]})

    response = await client.post("/load/llama3.2", params={"keep_alive": "-1", "num_ctx": "8192"})

    assert response.status_code == 200
    assert json.loads(generate.calls.last.request.content) == {
        "model": "llama3.2",
        "stream": False,
        "keep_alive": -1,
        "options": {"num_ctx": 8192},
    }
    body = response.json()
    assert body["loaded"] is True
    assert body["running"]["expires_at"] == "forever"
    assert body["running"]["expires_in_seconds"] is None
    assert body["running"]["context_length"] == 8192


async def test_loading_a_model_that_is_not_installed_is_a_404(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/generate").respond(404, json=not_found("ghost"))
    pull = ollama.post("/api/pull")

    response = await client.post("/load/ghost")

    assert response.status_code == 404
    assert response.json() == {"detail": "model 'ghost' not found"}
    assert not pull.called


async def test_load_with_pull_pulls_a_missing_model_first(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/show").respond(404, json=not_found("tiny:latest"))
    pull = ollama.post("/api/pull").respond(
        200,
        content=ndjson({"status": "pulling manifest"}, {"status": "pulling abc", "total": 10}, {"status": "success"}),
    )
    generate = ollama.post("/api/generate").respond(200, json=LOADED)
    ollama["ps"].respond(200, json={"models": [_ps_entry("tiny:latest", _soon())]})

    response = await client.post("/load/tiny", params={"pull": "true"})

    assert response.status_code == 200
    assert json.loads(pull.calls.last.request.content) == {"model": "tiny", "stream": True}
    assert generate.called
    assert 0 < response.json()["running"]["expires_in_seconds"] <= 1800


async def test_load_with_pull_skips_the_pull_when_installed(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/show").respond(200, json=show(["completion"]))
    pull = ollama.post("/api/pull")
    ollama.post("/api/generate").respond(200, json=LOADED)

    response = await client.post("/load/llama3.2", params={"pull": "true"})

    assert response.status_code == 200
    assert response.json() == {"model": "llama3.2", "loaded": False, "running": None, "backend": ollama.host}
    assert not pull.called


@pytest.mark.parametrize(
    ("query", "loc"),
    [({"keep_alive": "soon"}, "keep_alive"), ({"num_ctx": "0"}, "num_ctx"), ({"pull": "maybe"}, "pull")],
)
async def test_load_rejects_bad_parameters(
    client: Client, ollama: ServedOllama, query: dict[str, str], loc: str
) -> None:
    generate = ollama.post("/api/generate").respond(200, json=LOADED)

    response = await client.post("/load/llama3.2", params=query)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", loc]
    assert not generate.called


async def test_unloading_sends_keep_alive_zero_and_is_fine_when_not_loaded(
    client: Client, ollama: ServedOllama
) -> None:
    generate = ollama.post("/api/generate").respond(200, json={**LOADED, "done_reason": "unload"})

    response = await client.post("/unload/llama3.2")

    assert response.status_code == 200
    assert response.json() == {"status": "unloaded", "model": "llama3.2"}
    assert json.loads(generate.calls.last.request.content) == {"model": "llama3.2", "stream": False, "keep_alive": 0}


async def test_deleting_sends_the_name_in_a_delete_body(client: Client, ollama: ServedOllama) -> None:
    route = ollama.delete("/api/delete").respond(200)

    response = await client.delete("/models/llama3.2:1b")

    assert response.status_code == 200
    assert response.json() == {"status": "deleted", "model": "llama3.2:1b"}
    assert json.loads(route.calls.last.request.content) == {"model": "llama3.2:1b"}


async def test_deleting_a_missing_model_is_a_404(client: Client, ollama: ServedOllama) -> None:
    ollama.delete("/api/delete").respond(404, json=not_found("ghost"))

    response = await client.delete("/models/ghost")

    assert response.status_code == 404
    assert "not found" in response.json()["detail"]


# -- what runs --------------------------------------------------------------------------------


async def test_running_shows_forever_as_forever(client: Client, ollama: ServedOllama) -> None:
    ollama["ps"].respond(200, json={"models": [_ps_entry("a:latest", FOREVER), _ps_entry("b:latest", _soon(10), 2048)]})

    response = await client.get("/running")

    running = response.json()["running"]
    assert response.status_code == 200
    assert (running[0]["name"], running[0]["expires_at"]) == ("a:latest", "forever")
    assert running[1]["expires_at"] != "forever"
    assert 0 < running[1]["expires_in_seconds"] <= 600
    assert running[1]["size_vram"] == 5137025024


async def test_status_of_a_loaded_vision_model_lists_its_capabilities(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/show").respond(200, json=show(["completion", "vision"]))
    ollama.get("/api/tags").respond(
        200, json={"models": [{**TAGS["models"][0], "name": "llava:7b", "model": "llava:7b"}]}
    )
    ollama["ps"].respond(200, json={"models": [_ps_entry("llava:7b", _soon())]})

    response = await client.get("/status/llava:7b")

    body = response.json()
    assert response.status_code == 200
    assert body["installed"] is True
    assert body["loaded"] is True
    assert body["capabilities"] == ["completion", "vision"]
    assert body["context_length"] == 131072
    assert body["size"] == 2019393189
    assert body["details"]["quantization_level"] == "Q4_K_M"


async def test_status_of_an_unknown_model_says_not_installed(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/show").respond(404, json=not_found("ghost:latest"))
    ollama.get("/api/tags").respond(200, json={"models": []})

    response = await client.get("/status/ghost")

    assert response.status_code == 200
    assert response.json() == {"model": "ghost", "installed": False, "loaded": False}


async def test_the_model_list_says_which_models_are_loaded(client: Client, ollama: ServedOllama) -> None:
    ollama.get("/api/tags").respond(200, json=TAGS)
    ollama["ps"].respond(200, json={"models": [_ps_entry("llama3.2:latest", _soon())]})

    response = await client.get("/models_list/")

    assert [m["loaded"] for m in response.json()["models_list"]] == [True]


async def test_server_info_names_ollama_and_its_models(client: Client, ollama: ServedOllama) -> None:
    ollama.get("/api/version").respond(200, json={"version": "0.33.0-rc2"})
    ollama.get("/api/tags").respond(200, json=TAGS)
    ollama["ps"].respond(200, json={"models": [_ps_entry("llama3.2:latest", _soon())]})

    body = (await client.get("/")).json()

    assert body["service"] == "minato"
    assert body["ollama"] == {
        "url": ollama.url,
        "reachable": True,
        "version": "0.33.0-rc2",
        "backends": [
            {
                "name": ollama.host,
                "url": ollama.url,
                "state": "unknown",
                "installed": 1,
                "loaded": ["llama3.2:latest"],
            }
        ],
    }
    assert body["installed"] == ["llama3.2:latest"]
    assert body["running"] == ["llama3.2:latest"]


async def test_server_info_says_why_ollama_is_unreachable(client: Client, ollama: ServedOllama) -> None:
    ollama.down()

    response = await client.get("/")

    assert response.status_code == 200
    assert response.json()["ollama"]["reachable"] is False
    assert ollama.url in response.json()["ollama"]["reason"]


# -- generation parameters beyond the seed ------------------------------------------------------


async def test_every_new_parameter_reaches_ollama_under_its_ollama_name(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get(
        "/llama3.2",
        params=[
            ("message", "hi"),
            ("max_new_tokens", "64"),
            ("top_p", "0.9"),
            ("top_k", "40"),
            ("min_p", "0.05"),
            ("repeat_penalty", "1.1"),
            ("presence_penalty", "0.5"),
            ("frequency_penalty", "-0.5"),
            ("stop", "\n"),
            ("stop", "END"),
            ("format", "json"),
            ("think", "false"),
        ],
    )

    assert response.status_code == 200
    sent = json.loads(route.calls.last.request.content)
    assert sent["options"] == {
        "num_predict": 64,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "stop": ["\n", "END"],
    }
    assert sent["format"] == "json"
    assert sent["think"] is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_new_tokens", "-3"),
        ("top_p", "1.5"),
        ("top_k", "-1"),
        ("min_p", "-0.1"),
        ("repeat_penalty", "-1"),
        ("presence_penalty", "2.5"),
        ("frequency_penalty", "-3"),
        ("format", "yaml"),
        ("think", "perhaps"),
    ],
)
async def test_an_out_of_range_value_is_a_422_naming_the_parameter(
    client: Client, ollama: ServedOllama, name: str, value: str
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2", params={"message": "hi", name: value})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", name]
    assert not route.called


async def test_too_many_stop_values_is_a_422(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2", params=(("message", "hi"), *(("stop", f"s{n}") for n in range(17))))

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "stop"]
    assert not route.called


async def test_server_wide_defaults_apply_and_a_request_value_wins(ollama: ServedOllama) -> None:
    settings = Settings(
        ollama_url=ollama.url,
        session_store="memory://",
        default_options={"temperature": 0.2, "max_new_tokens": 128},
        default_keep_alive="30m",
        ollama_probe_interval=0,
    )
    route = ollama.post("/api/chat").respond(200, json=chat_answer())
    app = create_app(settings)
    async with AsyncTestClient(app=app) as client:
        await client.get("/llama3.2", params={"message": "hi", "temperature": "0.9"})

    sent = json.loads(route.calls.last.request.content)
    assert sent["options"] == {"temperature": 0.9, "num_predict": 128}
    assert sent["keep_alive"] == "30m"


async def test_thinking_is_its_own_event_in_structured_streams_and_absent_from_text(
    client: Client, ollama: ServedOllama
) -> None:
    body = ndjson(
        {"model": "qwen3", "message": {"role": "assistant", "content": "", "thinking": "Hmm."}, "done": False},
        {"model": "qwen3", "message": {"role": "assistant", "content": "Yes."}, "done": False},
        chat_done("qwen3"),
    )
    ollama.post("/api/chat").respond(200, content=body)

    text = await client.get("/stream/qwen3", params={"message": "?", "think": "true"})
    nd = await client.get("/stream/qwen3", params={"message": "?"}, headers={"Accept": "application/x-ndjson"})
    sse = await client.get("/stream/qwen3", params={"message": "?"}, headers={"Accept": "text/event-stream"})

    assert text.text == "Yes."
    assert [json.loads(line) for line in nd.text.splitlines()][:2] == [{"thinking": "Hmm."}, {"token": "Yes."}]
    assert re.match(
        r'id: [0-9a-f]{16}-1\nevent: thinking\ndata: \{"thinking":"Hmm."\}\n\n'
        r'id: [0-9a-f]{16}-2\nevent: token\ndata: \{"token":"Yes."\}',
        sse.text,
    )


async def test_a_whole_answer_carries_the_thinking(client: Client, ollama: ServedOllama) -> None:
    answer = chat_answer("Yes.", model="qwen3")
    answer["message"]["thinking"] = "Hmm."
    ollama.post("/api/chat").respond(200, json=answer)

    body = (await client.get("/qwen3", params={"message": "?"})).json()

    assert body["response"] == "Yes."
    assert body["thinking"] == "Hmm."
