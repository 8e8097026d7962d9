"""Ollama's own clients through Minato's native door (``/api/*``), Minato running as a real server.

ollama-python (sync and async), LangChain's ChatOllama, ollama-js under Node and the calls Open
WebUI makes at start-up talk to Minato as they would to Ollama, with a key. What reached the
stand-in is checked too: the body each client sent, unchanged, and none of the client's keys.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import httpx
import ollama
import pytest
from langchain_ollama import ChatOllama

from tests.support.native_door import (
    ADMIN,
    USER,
    _bearer,
    _events,
    _tokens_generated,
    fx_door,  # noqa: F401 - a fixture, found by name
)
from tests.support.servers import REPO, MinatoServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

MODEL: Final = "llama3.2:1b"
ANSWER: Final = "The sky is blue because of Rayleigh scattering."
#: What a stand-in model answers, one token per streamed line.
TOKENS: Final = ["The", " sky", " is", " blue", " because", " of", " Rayleigh", " scattering."]
#: Text and a number that JSON encoders write differently (raw UTF-8 or ``\\u`` escapes; ``1e-07`` or
#: ``1e-7``): a body Minato decoded and encoded again would not keep its length.
MESSAGES: Final = [{"role": "user", "content": "Grüße ☃ <b>&</b>: why is the sky blue?"}]
OPTIONS: Final = {"temperature": 1e-07, "seed": 42}
NODE_DIR: Final = REPO / "tests" / "e2e" / "node"


def _received(standin: httpx.Client) -> list[dict[str, Any]]:
    """Every ``/api/*`` request that reached the stand-in since the test began."""
    records: list[dict[str, Any]] = standin.get("/_standin/requests").json()
    return records


def _assert_no_client_key_reached_ollama(records: list[dict[str, Any]]) -> None:
    for record in records:
        headers: dict[str, str] = record["headers"]
        assert "authorization" not in headers, record
        assert "x-api-key" not in headers, record
        assert not [value for value in headers.values() if USER in value or ADMIN in value], record


def _assert_relayed_unchanged(standin: httpx.Client, sent: list[httpx.Request]) -> None:
    """Each body the client sent reached the stand-in as it was, in order, and no key went with it.

    The stand-in shows a body decoded: equal values in the same key order, and the same
    ``Content-Length``, for a body that any re-encoding would lengthen (see ``MESSAGES``), is the
    same bytes.
    """
    records = _received(standin)
    with_body = [request for request in sent if request.content]
    assert with_body, "the client sent no body: nothing was checked"
    forwarded = [record for record in records if record["method"] in {"POST", "DELETE"}]
    assert [(r["method"], r["path"]) for r in forwarded] == [(s.method, s.url.path) for s in with_body]
    for request, record in zip(with_body, forwarded, strict=True):
        assert record["headers"]["content-length"] == str(len(request.content)), record
        assert json.dumps(record["body"]) == json.dumps(json.loads(request.content)), record
    _assert_no_client_key_reached_ollama(records)
    for request in sent:
        assert USER in (request.headers.get("authorization", "") + request.headers.get("x-api-key", "")), "no key sent"


# -- ollama-python ------------------------------------------------------------------------------


@pytest.mark.parametrize("key_from", ["bearer", "x-api-key", "environment"])
def test_ollama_python_chats_generates_lists_shows_and_embeds_through_the_door(
    door: MinatoServer, standin: httpx.Client, monkeypatch: pytest.MonkeyPatch, key_from: str
) -> None:
    sent: list[httpx.Request] = []
    hooks = {"event_hooks": {"request": [sent.append]}}
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    if key_from == "environment":
        # ollama-python sends OLLAMA_API_KEY as a Bearer key to any host that got no Authorization.
        monkeypatch.setenv("OLLAMA_API_KEY", USER)
        client = ollama.Client(host=door.url, **hooks)
    elif key_from == "x-api-key":
        client = ollama.Client(host=door.url, headers={"X-API-Key": USER}, **hooks)
    else:
        client = ollama.Client(host=door.url, headers=_bearer(USER), **hooks)

    with client:
        whole = client.chat(MODEL, messages=MESSAGES, options=OPTIONS)
        parts = list(client.chat(MODEL, messages=MESSAGES, options=OPTIONS, stream=True))
        generated = client.generate(MODEL, prompt="Grüße ☃, why is the sky blue?", options=OPTIONS)
        listed = client.list()
        shown = client.show(MODEL)
        running = client.ps()
        embedded = client.embed("all-minilm", input=["Grüße ☃", "the sky"])

    assert whole.done
    assert whole.message.content == ANSWER
    assert [part.message.content for part in parts[:-1]] == TOKENS
    assert parts[-1].done
    assert parts[-1].done_reason == "stop"
    assert parts[-1].eval_count == len(TOKENS)
    assert generated.response == ANSWER
    assert MODEL in [entry.model for entry in listed.models]
    assert shown.capabilities == ["completion", "tools"]
    assert MODEL in [entry.model for entry in running.models]
    assert len(embedded.embeddings) == 2
    assert [len(vector) for vector in embedded.embeddings] == [384, 384]
    sent_as = "x-api-key" if key_from == "x-api-key" else "authorization"
    assert {request.headers[sent_as] for request in sent} == {USER if key_from == "x-api-key" else f"Bearer {USER}"}
    _assert_relayed_unchanged(standin, sent)


#: relay.py's ``_Counted`` reads ``response`` as the OpenAI Responses API's ``{"usage": ...}`` object, so
#: a generate answer, whose ``response`` is the text, fails to decode and its ``eval_count`` is lost.


@pytest.mark.parametrize(
    ("route", "stream"),
    [
        pytest.param("chat", False, id="chat"),
        pytest.param("chat", True, id="chat-stream"),
        pytest.param("generate", False, id="generate"),
        pytest.param("generate", True, id="generate-stream"),
    ],
)
def test_ollama_python_generations_are_counted_in_tokens_generated(
    door: MinatoServer, route: str, stream: bool
) -> None:
    before = _tokens_generated(door)

    with ollama.Client(host=door.url, headers=_bearer(USER)) as client:
        if route == "chat":
            answer: object = client.chat(MODEL, messages=MESSAGES, stream=stream)
        else:
            answer = client.generate(MODEL, prompt="why is the sky blue?", stream=stream)
        if stream:
            list(answer)  # type: ignore[call-overload]

    assert _tokens_generated(door) - before == len(TOKENS)


@dataclass
class _AsyncResults:
    whole: ollama.ChatResponse
    parts: list[ollama.ChatResponse]
    generated: ollama.GenerateResponse
    listed: ollama.ListResponse
    shown: ollama.ShowResponse
    running: ollama.ProcessResponse
    embedded: ollama.EmbedResponse


async def _async_calls(client: ollama.AsyncClient) -> _AsyncResults:
    async with client:
        whole = await client.chat(MODEL, messages=MESSAGES, options=OPTIONS)
        parts = [part async for part in await client.chat(MODEL, messages=MESSAGES, options=OPTIONS, stream=True)]
        generated = await client.generate(MODEL, prompt="why is the sky blue?", options=OPTIONS)
        return _AsyncResults(
            whole=whole,
            parts=parts,
            generated=generated,
            listed=await client.list(),
            shown=await client.show(MODEL),
            running=await client.ps(),
            embedded=await client.embed("all-minilm", input="Grüße ☃"),
        )


@pytest.mark.parametrize("key_from", ["headers", "environment"])
def test_ollama_python_async_client_works_through_the_door(
    door: MinatoServer, standin: httpx.Client, monkeypatch: pytest.MonkeyPatch, key_from: str
) -> None:
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    hooks = {"event_hooks": {"request": [record]}}
    if key_from == "environment":
        monkeypatch.setenv("OLLAMA_API_KEY", USER)
        client = ollama.AsyncClient(host=door.url, **hooks)
    else:
        monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
        client = ollama.AsyncClient(host=door.url, headers=_bearer(USER), **hooks)

    results = asyncio.run(_async_calls(client))

    assert results.whole.message.content == ANSWER
    assert "".join(part.message.content or "" for part in results.parts) == ANSWER
    assert results.parts[-1].done
    assert results.generated.response == ANSWER
    assert MODEL in [entry.model for entry in results.listed.models]
    assert results.shown.capabilities == ["completion", "tools"]
    assert MODEL in [entry.model for entry in results.running.models]
    assert [len(vector) for vector in results.embedded.embeddings] == [384]
    assert all(request.headers["authorization"] == f"Bearer {USER}" for request in sent)
    _assert_relayed_unchanged(standin, sent)


def test_ollama_python_pulls_with_the_admin_key_and_is_refused_with_a_user_key(
    door: MinatoServer, standin: httpx.Client
) -> None:
    with ollama.Client(host=door.url, headers=_bearer(USER)) as user:
        with pytest.raises(ollama.ResponseError) as refused:
            user.pull("tinyllama")
        with pytest.raises(ollama.ResponseError) as refused_stream:
            list(user.pull("tinyllama", stream=True))
        with pytest.raises(ollama.ResponseError) as refused_delete:
            user.delete(MODEL)
    assert (refused.value.status_code, refused.value.error) == (403, "this route needs an admin key")
    assert refused_stream.value.status_code == 403
    assert refused_delete.value.status_code == 403
    assert not [r for r in _received(standin) if r["path"] in {"/api/pull", "/api/delete"}]

    sent: list[httpx.Request] = []
    with ollama.Client(host=door.url, headers=_bearer(ADMIN), event_hooks={"request": [sent.append]}) as admin:
        try:
            pulled = admin.pull("tinyllama")
            progress = list(admin.pull("tinyllama", stream=True))
            installed = [entry.model for entry in admin.list().models]
        finally:
            deleted = admin.delete("tinyllama")

    assert pulled.status == "success"
    assert progress[0].status == "pulling manifest"
    assert progress[-1].status == "success"
    assert "tinyllama:latest" in installed
    assert deleted.status == "success"
    assert "tinyllama:latest" not in [m["model"] for m in standin.get("/api/tags").json()["models"]]
    _assert_no_client_key_reached_ollama(_received(standin))
    assert [(r["path"], r["body"]) for r in _received(standin) if r["method"] != "GET"] == [
        ("/api/pull", {"model": "tinyllama", "insecure": False, "stream": False}),
        ("/api/pull", {"model": "tinyllama", "insecure": False, "stream": True}),
        ("/api/delete", {"model": "tinyllama"}),
    ]
    assert len([request for request in sent if request.content]) == 3


def test_ollama_python_gets_a_404_response_error_for_an_unknown_model(
    door: MinatoServer, standin: httpx.Client
) -> None:
    with ollama.Client(host=door.url, headers=_bearer(USER)) as client:
        with pytest.raises(ollama.ResponseError) as whole:
            client.chat("no-such-model:1b", messages=MESSAGES)
        with pytest.raises(ollama.ResponseError) as streamed:
            list(client.chat("no-such-model:1b", messages=MESSAGES, stream=True))

    for error in (whole, streamed):
        assert error.value.status_code == 404
        assert error.value.error == "model 'no-such-model:1b' not found"
    chats = [(r["body"]["model"], r["body"]["stream"]) for r in _received(standin) if r["path"] == "/api/chat"]
    assert chats == [("no-such-model:1b", False), ("no-such-model:1b", True)]


def _read_into(parts: list[ollama.ChatResponse], stream: Iterator[ollama.ChatResponse]) -> None:
    for part in stream:
        parts.append(part)


def test_ollama_python_raises_on_a_chat_stream_that_fails_part_way_or_before(door: MinatoServer) -> None:
    parts: list[ollama.ChatResponse] = []
    with ollama.Client(host=door.url, headers=_bearer(USER)) as client:
        with pytest.raises(ollama.ResponseError) as midway:
            _read_into(parts, client.chat("standin/fail-midstream", messages=MESSAGES, stream=True))
        with pytest.raises(ollama.ResponseError) as before:
            client.chat("standin/fail-before", messages=MESSAGES)

    assert [part.message.content for part in parts] == TOKENS[:3], "the tokens before the failure arrive"
    assert midway.value.error == "an error was encountered while running the model: unexpected EOF"
    assert before.value.status_code == 500
    assert "model runner has unexpectedly stopped" in before.value.error


@pytest.mark.parametrize("key", [None, "not-a-key", f"{USER}x"])
def test_ollama_python_without_a_valid_key_gets_a_401_response_error(
    door: MinatoServer, standin: httpx.Client, monkeypatch: pytest.MonkeyPatch, key: str | None
) -> None:
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    headers = _bearer(key) if key else None
    with ollama.Client(host=door.url, headers=headers) as client:
        calls: list[Callable[[], object]] = [
            lambda: client.chat(MODEL, messages=MESSAGES),
            lambda: list(client.chat(MODEL, messages=MESSAGES, stream=True)),
            client.list,
            client.ps,
            lambda: client.show(MODEL),
            lambda: client.embed("all-minilm", input="hi"),
        ]
        for call in calls:
            with pytest.raises(ollama.ResponseError) as error:
                call()
            assert error.value.status_code == 401
            assert "API key" in error.value.error

    received = [r["path"] for r in _received(standin)]
    assert not [path for path in received if path in {"/api/chat", "/api/show", "/api/embed"}]
    # The session's other Minato probes the same stand-in every few seconds (version, tags, ps):
    # a forwarded ps is one more than the probes asked for.
    assert received.count("/api/ps") <= received.count("/api/version"), received


# -- LangChain --------------------------------------------------------------------------------------


def test_langchain_chat_ollama_validates_invokes_and_streams_through_the_door(
    door: MinatoServer, standin: httpx.Client
) -> None:
    chat = ChatOllama(
        model=MODEL, base_url=door.url, client_kwargs={"headers": _bearer(USER)}, validate_model_on_init=True
    )
    assert [r["path"] for r in _received(standin) if r["path"] == "/api/tags"], "validation asked Ollama's list"

    answer = chat.invoke("Why is the sky blue?")
    chunks = list(chat.stream("Why is the sky blue?"))
    awaited = asyncio.run(chat.ainvoke("Why is the sky blue?"))

    assert answer.content == ANSWER
    assert "".join(str(chunk.content) for chunk in chunks) == ANSWER
    assert awaited.content == ANSWER
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] == len(TOKENS)
    records = _received(standin)
    assert len([r for r in records if r["path"] == "/api/chat"]) == 3
    _assert_no_client_key_reached_ollama(records)


def test_langchain_chat_ollama_with_a_wrong_key_fails_validation(door: MinatoServer) -> None:
    with pytest.raises(ValueError, match="Received an error from the Ollama API"):
        ChatOllama(
            model=MODEL, base_url=door.url, client_kwargs={"headers": _bearer("wrong")}, validate_model_on_init=True
        )


# -- ollama-js --------------------------------------------------------------------------------------


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the ollama-js test needs Node 20 (CI has it)")
    version = subprocess.run([node, "-v"], capture_output=True, text=True, timeout=10, check=True).stdout  # noqa: S603
    assert int(version.strip().lstrip("v").split(".")[0]) >= 20, f"ollama-js needs Node 20, found {version}"
    if not (NODE_DIR / "node_modules" / "ollama").is_dir():
        pytest.fail(f"ollama-js is not installed: run `make install` (npm ci --prefix {NODE_DIR.relative_to(REPO)})")
    return node


def test_ollama_js_chats_streams_lists_and_reports_errors_through_the_door(
    door: MinatoServer, standin: httpx.Client
) -> None:
    node = _node()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MINATO_", "OLLAMA_"))}
    env |= {"MINATO_URL": door.url, "MINATO_KEY": USER, "MINATO_MODEL": MODEL}

    run = subprocess.run(  # noqa: S603 - node running our own script
        [node, str(NODE_DIR / "clients.mjs")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=NODE_DIR,
    )

    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)
    version = results["version"]["value"]["version"]
    assert all(part.isdigit() for part in re.sub(r"^v|-.*", "", version).split("."))
    assert results["chat"] == {"ok": True, "value": {"content": ANSWER, "done": True, "eval_count": len(TOKENS)}}
    stream = results["stream"]["value"]
    assert stream["parts"][:-1] == TOKENS
    assert (stream["done"], stream["done_reason"]) == (True, "stop")
    assert MODEL in results["list"]["value"]
    assert MODEL in results["ps"]["value"]
    unknown = results["unknown_model"]
    assert (unknown["name"], unknown["status"]) == ("ResponseError", 404)
    assert unknown["message"] == "model 'no-such-model:1b' not found"
    no_key = results["no_key"]
    assert (no_key["name"], no_key["status"]) == ("ResponseError", 401)
    records = _received(standin)
    assert [r["body"]["stream"] for r in records if r["path"] == "/api/chat"] == [False, True, False]
    _assert_no_client_key_reached_ollama(records)


# -- Open WebUI's start-up calls ------------------------------------------------------------------


def test_open_webui_start_up_calls_get_a_numeric_version_and_model_lists(
    door: MinatoServer, standin: httpx.Client
) -> None:
    with httpx.Client(base_url=door.url, headers=_bearer(USER), timeout=10) as client:
        version = client.get("/api/version")
        tags = client.get("/api/tags")
        running = client.get("/api/ps")

    assert version.status_code == 200
    # Open WebUI compares versions like this and fails to start on anything else.
    parts = re.sub(r"^v|-.*", "", version.json()["version"]).split(".")
    assert [int(part) for part in parts]
    for answer in (tags, running):
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/json")
        assert isinstance(answer.json()["models"], list)
    assert MODEL in [entry["model"] for entry in tags.json()["models"]]
    _assert_no_client_key_reached_ollama(_received(standin))


@pytest.mark.parametrize("path", ["/api/version", "/api/tags", "/api/ps"])
def test_open_webui_start_up_calls_without_a_key_are_401(door: MinatoServer, path: str) -> None:
    answer = httpx.get(f"{door.url}{path}", timeout=10)

    assert answer.status_code == 401
    assert "API key is required" in answer.json()["error"]


# -- disconnects ------------------------------------------------------------------------------------


def test_a_client_that_closes_a_native_chat_stream_stops_ollama(door: MinatoServer, standin: httpx.Client) -> None:
    model = "standin/paced:400x50"  # twenty seconds of tokens: the hang-up comes long before the end
    body = {"model": model, "messages": MESSAGES}
    with (
        httpx.Client(base_url=door.url, headers=_bearer(USER), timeout=30) as client,
        client.stream("POST", "/api/chat", json=body) as response,
    ):
        assert response.status_code == 200
        first = json.loads(next(response.iter_lines()))
        assert first["done"] is False

    eventually(lambda: [e["type"] for e in _events(standin, model)], lambda k: "stream_cancelled" in k, "events")
    eventually(lambda: standin.get("/_standin/active").json(), lambda a: a == {"streams": 0}, "stand-in streams")
    assert "stream_completed" not in [event["type"] for event in _events(standin, model)]


def test_ollama_python_closing_a_chat_stream_stops_ollama(door: MinatoServer, standin: httpx.Client) -> None:
    model = "standin/paced:400x51"
    with ollama.Client(host=door.url, headers=_bearer(USER)) as client:
        parts = client.chat(model, messages=MESSAGES, stream=True)
        assert next(parts).message.content == "The"
        parts.close()  # what leaving a `for part in ...` loop early does once the iterator is dropped

        eventually(lambda: [e["type"] for e in _events(standin, model)], lambda k: "stream_cancelled" in k, "events")
        assert client.list().models, "the client still works after the hang-up"
    eventually(lambda: standin.get("/_standin/active").json(), lambda a: a == {"streams": 0}, "stand-in streams")
