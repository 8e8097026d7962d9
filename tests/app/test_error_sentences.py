"""Every message a client reads is Minato's own sentence; the library's wording goes to the log.

Every failure is real: a refused port, a name that does not resolve, a connection that never completes,
a TLS handshake with a server that speaks plain HTTP, a stalled, dropped or reset connection from the
stand-in served on loopback, Litestar's own validation.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from structlog.testing import capture_logs

from minato.settings import Settings
from minato.web.app import create_app
from tests.conftest import small_settings
from tests.support.served_ollama import ServedOllama
from tests.support.wire_failures import UNRESOLVABLE_URL, UNROUTABLE_URL, refused_url, unanswered_url

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
LIBRARY_WORDS = (
    "ssl:default",
    "Connect call failed",
    "Expected `",
    "TransferEncodingError",
    "aiohttp",
    "httpx",
    "msgspec",
)


def assert_no_library_words(text: str) -> None:
    for words in LIBRARY_WORDS:
        assert words not in text


async def test_a_refused_port_on_loopback_is_named_and_the_sockets_text_is_only_logged() -> None:
    url = refused_url()
    settings = Settings(ollama_url=url, session_store="memory://", ollama_probe_interval=0)
    app = create_app(settings)  # the real engine

    with capture_logs() as events:
        async with AsyncTestClient(app=app) as client:
            response = await client.get("/llama3.2", params={"message": "hi"})

    assert response.status_code == 503
    assert response.json() == {"detail": f"Ollama is unreachable at {url}: the connection was refused"}
    assert_no_library_words(response.text)
    # One line per failed call: the model list the catalog asked for, then the chat itself.
    logged = [event for event in events if event["event"] == "ollama_connection_failed"]
    assert logged
    assert all("Connect call failed" in event["error"] and event["ollama_url"] == url for event in logged)


async def test_ready_gives_the_same_sentence_for_a_refused_port() -> None:
    url = refused_url()
    app = create_app(Settings(ollama_url=url, session_store="memory://", ollama_probe_interval=0))

    async with AsyncTestClient(app=app) as client:
        response = await client.get("/ready")

    assert response.status_code == 503
    assert response.json()["reason"] == f"Ollama is unreachable at {url}: the connection was refused"


#: Where a case's Ollama is, given the served one: each failure is caused for real, on loopback or by an
#: address that fails before anything is sent.
#: A first-token deadline that never decides a case: the failure under test comes first, however busy the machine.
LATER = 60.0
Place = Callable[[ServedOllama, contextlib.ExitStack[bool | None]], str]


def _dropping(ollama: ServedOllama, _: contextlib.ExitStack[bool | None]) -> str:
    ollama.post("/api/chat").mock(side_effect=httpx.RemoteProtocolError("Server disconnected"))
    return ollama.url


def _resetting(ollama: ServedOllama, _: contextlib.ExitStack[bool | None]) -> str:
    ollama.post("/api/chat").mock(side_effect=ConnectionResetError(104, "Connection reset by peer"))
    return ollama.url


def _stalling(ollama: ServedOllama, _: contextlib.ExitStack[bool | None]) -> str:
    ollama.post("/api/chat").mock(side_effect=ollama.stall())
    return ollama.url


@pytest.mark.parametrize(
    ("place", "status", "detail", "first_token"),
    [
        pytest.param(
            lambda _, stack: stack.enter_context(unanswered_url()),
            503,
            "Ollama is unreachable at {url}: no connection within 0.1 s (MINATO_CONNECT_TIMEOUT)",
            LATER,
            id="connect-timeout",
        ),
        pytest.param(
            lambda *_: UNRESOLVABLE_URL,
            503,
            "Ollama is unreachable at {url}: cannot resolve host ollama.invalid",
            LATER,
            id="dns",
        ),
        pytest.param(
            lambda *_: refused_url(),
            503,
            "Ollama is unreachable at {url}: the connection was refused",
            LATER,
            id="refused",
        ),
        pytest.param(
            lambda *_: UNROUTABLE_URL,
            503,
            "Ollama is unreachable at {url}: the connection failed",
            LATER,
            id="unknown-cause",
        ),
        pytest.param(
            lambda ollama, _: ollama.tls_url,
            503,
            "Ollama is unreachable at {url}: the TLS handshake failed",
            LATER,
            id="tls-handshake",
        ),
        pytest.param(_stalling, 504, "Ollama did not start answering within 0.3 s", 0.3, id="read-timeout"),
        pytest.param(_dropping, 502, "Ollama at {url} closed the connection before answering", LATER, id="dropped"),
        pytest.param(
            _resetting,
            502,
            "the connection to Ollama at {url} failed: the connection was reset",
            LATER,
            id="reset",
        ),
    ],
)
async def test_transport_failures_are_told_in_minatos_words(
    ollama: ServedOllama, place: Place, status: int, detail: str, first_token: float
) -> None:
    with contextlib.ExitStack() as stack:
        url = place(ollama, stack)
        settings = msgspec.structs.replace(small_settings(url), connect_timeout=0.1, first_token_timeout=first_token)
        app = create_app(settings)  # the real transport, failing on the wire

        with capture_logs():
            async with AsyncTestClient(app=app) as client:
                response = await client.get("/llama3.2", params={"message": "hi"})

    assert response.status_code == status
    assert response.json() == {"detail": detail.format(url=url)}
    assert_no_library_words(response.text)


@pytest.mark.parametrize(
    ("path", "params", "loc", "msg"),
    [
        pytest.param("/llama3.2", {"num_ctx": "x"}, "num_ctx", "must be an integer", id="int"),
        pytest.param("/llama3.2", {"temperature": "abc"}, "temperature", "must be a number", id="float"),
        pytest.param("/llama3.2", {"think": "maybe"}, "think", "must be true or false", id="bool"),
        pytest.param("/llama3.2", {"top_p": "-1"}, "top_p", "must be at least 0", id="ge"),
        pytest.param("/llama3.2", {"temperature": "101"}, "temperature", "must be at most 100", id="le"),
        pytest.param("/llama3.2", {"seed": "1" * 30}, "seed", "must be at most 9223372036854775807", id="huge-int"),
        pytest.param("/llama3.2", {"temperature": "1e400"}, "temperature", "is out of range", id="overflow"),
        pytest.param("/llama3.2", {"system_prompt": ""}, "system_prompt", "must not be empty", id="min-length"),
        pytest.param("/llama3.2", {"format": "xml"}, "format", "must be one of: json", id="literal"),
        pytest.param("/chat", {"limit": "x"}, "limit", "must be an integer", id="chat-limit"),
        pytest.param("/chat", {"offset": "-1"}, "offset", "must be at least 0", id="chat-offset"),
    ],
)
async def test_litestars_validation_is_told_in_minatos_words(
    client: Client, ollama: ServedOllama, path: str, params: dict[str, str], loc: str, msg: str
) -> None:
    chat = ollama.post("/api/chat").respond(200, json={})

    response = await client.get(path, params={"message": "hi", **params} if path != "/chat" else params)

    assert response.status_code == 422
    assert response.json() == {"detail": [{"loc": ["query", loc], "msg": msg, "type": "value_error"}]}
    assert_no_library_words(response.text)
    assert not chat.called


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        pytest.param(
            b"{}", [{"loc": ["body", "system_prompt"], "msg": "field required", "type": "missing"}], id="missing"
        ),
        pytest.param(
            b'{"system_prompt": 3}',
            [{"loc": ["body", "system_prompt"], "msg": "must be a string", "type": "value_error"}],
            id="wrong-type",
        ),
        pytest.param(
            b'{"system_prompt": null}',
            [{"loc": ["body", "system_prompt"], "msg": "must be a string", "type": "value_error"}],
            id="null",
        ),
        pytest.param(
            b'{"system_prompt": "x", "prompt": "y"}',
            [{"loc": ["body", "prompt"], "msg": "unknown field (known: system_prompt)", "type": "extra_forbidden"}],
            id="unknown-field",
        ),
        pytest.param(b"[]", [{"loc": ["body"], "msg": "must be a JSON object", "type": "value_error"}], id="array"),
        pytest.param(b"not json", [{"loc": ["body"], "msg": "is not valid JSON", "type": "json_invalid"}], id="junk"),
        pytest.param(
            b'{"system_prompt": "x"', [{"loc": ["body"], "msg": "is not valid JSON", "type": "json_invalid"}], id="cut"
        ),
        pytest.param(b"", [{"loc": ["body"], "msg": "a JSON body is required", "type": "missing"}], id="empty"),
    ],
)
async def test_a_bad_system_prompt_body_is_a_422_in_minatos_words(
    client: Client, body: bytes, detail: list[dict[str, object]]
) -> None:
    response = await client.put("/chat/s/system_prompt", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 422
    assert response.json() == {"detail": detail}
    assert_no_library_words(response.text)
    assert (await client.get("/chat/s")).status_code == 404


async def test_a_malformed_multipart_body_says_so_without_the_parsers_words(
    client: Client, ollama: ServedOllama
) -> None:
    ollama.post("/api/show").respond(200, json={"capabilities": ["completion", "vision"]})
    chat = ollama.post("/api/chat").respond(200, json={})

    response = await client.post(
        "/vision/gemma3",
        params={"message": "hi"},
        headers={"content-type": "multipart/form-data; boundary=xyz"},
        content=b"--xyz\r\nContent-Disposition form-data\r\n\r\n\x89PNG\r\n--xyz--\r\n",
    )

    assert response.status_code == 422
    (item,) = response.json()["detail"]
    assert item["loc"] == ["body", "form"]
    assert item["msg"] == "is not a well-formed multipart/form-data body (check the boundary and part headers)"
    assert not chat.called


async def test_a_runner_error_relayed_verbatim_by_ollama_is_unwrapped(client: Client, ollama: ServedOllama) -> None:
    runner_body = json.dumps(
        {"error": {"code": 400, "message": "Multimodal data provided, but model does not support multimodal requests."}}
    )
    ollama.post("/api/chat").respond(400, json={"error": runner_body})

    response = await client.get("/llama3.2", params={"message": "hi"})

    assert response.status_code == 400
    assert response.json() == {"detail": "Multimodal data provided, but model does not support multimodal requests."}


@pytest.mark.parametrize(
    ("method", "path", "ask", "name", "hint"),
    [
        ("GET", "/llama3.2", {"params": {"message": "hi", "max_tokens": "5"}}, "max_tokens", "max_new_tokens"),
        ("GET", "/llama3.2", {"params": {"message": "hi", "num_predict": "5"}}, "num_predict", "max_new_tokens"),
        ("GET", "/llama3.2", {"params": {"message": "hi", "stream": "true"}}, "stream", "/stream/"),
        ("GET", "/llama3.2", {"params": {"prompt": "hi"}}, "prompt", "Minato calls it message"),
        ("POST", "/llama3.2", {"json": {"message": "hi", "max_tokens": 5}}, "max_tokens", "max_new_tokens"),
        ("POST", "/llama3.2", {"json": {"message": "hi", "stream": True}}, "stream", "/stream/"),
    ],
)
async def test_another_apis_name_on_minatos_routes_points_to_minatos(
    client: Client, method: str, path: str, ask: dict[str, object], name: str, hint: str
) -> None:
    response = await client.request(method, path, **ask)  # type: ignore[arg-type]

    assert response.status_code == 422
    (item,) = [item for item in response.json()["detail"] if item["loc"][-1] == name]
    assert hint in item["msg"]
    assert item["msg"].startswith(("unknown parameter", "unknown field"))


async def test_a_hint_is_given_only_where_the_route_takes_what_it_points_to(client: Client) -> None:
    response = await client.put("/chat/c1/system_prompt", json={"system_prompt": "be brief", "prompt": "x"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == "unknown field (known: system_prompt)"
