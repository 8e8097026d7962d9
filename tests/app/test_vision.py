"""``POST /vision/{model}`` and ``/stream/vision/{model}``: multipart uploads in, base64 images upstream."""

from __future__ import annotations

import base64
import json

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from minato.settings import Settings
from minato.web.app import create_app
from tests.support.payloads import (
    BMP_HEADER,
    GIF_HEADER,
    JPEG_HEADER,
    PNG_1PX,
    WEBP_HEADER,
    catalogue,
    chat_answer,
    chat_done,
    chat_token,
    ndjson,
    not_found,
    show,
)
from tests.support.served_ollama import Route, ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
#: One ``files`` entry for httpx: the form field and its file name, content and type.
Upload = tuple[str, tuple[str, bytes, str]]
VISION = ["completion", "vision"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png(name: str = "a.png") -> Upload:
    return ("images", (name, PNG_1PX, "image/png"))


def sent(route: Route) -> dict[str, object]:
    body: dict[str, object] = json.loads(route.calls.last.request.content)
    return body


@pytest.fixture(name="chat")
def fx_chat(ollama: ServedOllama) -> Route:
    """A vision-capable model that answers."""
    ollama.post("/api/show").respond(200, json=show(VISION))
    return ollama.post("/api/chat").respond(200, json=chat_answer("A single pixel.", model="gemma3"))


async def test_an_uploaded_image_goes_upstream_as_padded_base64(client: Client, chat: Route) -> None:
    response = await client.post("/vision/gemma3", params={"message": "What is this?"}, files=[png()])

    assert response.status_code == 200
    assert response.json()["response"] == "A single pixel."
    assert response.json()["model"] == "gemma3"
    assert sent(chat) == {
        "model": "gemma3",
        "messages": [{"role": "user", "content": "What is this?", "images": [b64(PNG_1PX)]}],
        "stream": True,
    }
    assert b64(PNG_1PX).endswith("=")  # the 1-pixel PNG needs padding: proves it is kept


async def test_the_message_can_be_a_form_field(client: Client, chat: Route) -> None:
    response = await client.post("/vision/gemma3", data={"message": "Describe it."}, files=[png()])

    assert response.status_code == 200
    assert sent(chat)["messages"] == [{"role": "user", "content": "Describe it.", "images": [b64(PNG_1PX)]}]


async def test_generation_parameters_apply_to_vision_too(client: Client, chat: Route) -> None:
    response = await client.post(
        "/vision/gemma3",
        params={"message": "hi", "system_prompt": "Be brief.", "temperature": "0", "keep_alive": "10m"},
        files=[png()],
    )

    assert response.status_code == 200
    body = sent(chat)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi", "images": [b64(PNG_1PX)]},
    ]
    assert body["options"] == {"temperature": 0.0}
    assert body["keep_alive"] == "10m"


async def test_a_message_in_both_places_is_a_422(client: Client, chat: Route) -> None:
    response = await client.post("/vision/gemma3", params={"message": "a"}, data={"message": "b"}, files=[png()])

    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["body", "message"]]
    assert not chat.called


async def test_no_message_anywhere_is_a_422_missing(client: Client, chat: Route) -> None:
    response = await client.post("/vision/gemma3", files=[png()])

    assert response.status_code == 422
    (item,) = response.json()["detail"]
    assert item["loc"] == ["query", "message"]
    assert item["type"] == "missing"
    assert not chat.called


@pytest.mark.parametrize("where", ["query", "body"])
async def test_a_blank_message_is_a_422(client: Client, chat: Route, where: str) -> None:
    if where == "query":
        response = await client.post("/vision/gemma3", params={"message": "  "}, files=[png()])
    else:
        response = await client.post("/vision/gemma3", data={"message": "  "}, files=[png()])

    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [[where, "message"]]
    assert not chat.called


async def test_two_images_are_sent_in_upload_order(client: Client, chat: Route) -> None:
    response = await client.post(
        "/vision/gemma3",
        params={"message": "Compare."},
        files=[("images", ("b.jpg", JPEG_HEADER, "image/jpeg")), png()],
    )

    assert response.status_code == 200
    assert sent(chat)["messages"] == [
        {"role": "user", "content": "Compare.", "images": [b64(JPEG_HEADER), b64(PNG_1PX)]}
    ]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(JPEG_HEADER, id="jpeg"),
        pytest.param(GIF_HEADER, id="gif"),
        pytest.param(b"GIF87a" + GIF_HEADER[6:], id="gif87a"),
        pytest.param(WEBP_HEADER, id="webp"),
        pytest.param(BMP_HEADER, id="bmp"),
    ],
)
async def test_images_are_recognised_by_content_whatever_their_name_claims(
    client: Client, chat: Route, data: bytes
) -> None:
    response = await client.post(
        "/vision/gemma3", params={"message": "hi"}, files=[("images", ("photo.txt", data, "text/plain"))]
    )

    assert response.status_code == 200
    assert sent(chat)["messages"] == [{"role": "user", "content": "hi", "images": [b64(data)]}]


async def test_a_text_file_named_png_is_a_422_on_that_image(client: Client, chat: Route) -> None:
    response = await client.post(
        "/vision/gemma3",
        params={"message": "hi"},
        files=[png("ok.png"), ("images", ("x.png", b"just some text\n", "image/png"))],
    )

    assert response.status_code == 422
    (item,) = response.json()["detail"]
    assert item["loc"] == ["body", "images", 1]
    assert "PNG" in item["msg"]
    assert not chat.called


async def test_a_lone_text_file_is_images_index_zero(client: Client, chat: Route) -> None:
    response = await client.post(
        "/vision/gemma3", params={"message": "hi"}, files=[("images", ("x.png", b"hello", "image/png"))]
    )

    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["body", "images", 0]]
    assert not chat.called


async def test_more_images_than_allowed_is_a_422(client: Client, chat: Route) -> None:
    response = await client.post("/vision/gemma3", params={"message": "hi"}, files=[png() for _ in range(4)])

    assert response.status_code == 422
    (item,) = response.json()["detail"]
    assert item["loc"] == ["body", "images"]
    assert "3" in item["msg"]
    assert not chat.called


async def test_the_maximum_number_of_images_is_accepted(client: Client, chat: Route) -> None:
    response = await client.post("/vision/gemma3", params={"message": "hi"}, files=[png() for _ in range(3)])

    assert response.status_code == 200
    assert sent(chat)["messages"] == [{"role": "user", "content": "hi", "images": [b64(PNG_1PX)] * 3}]


async def test_an_image_over_the_size_limit_is_a_413(client: Client, chat: Route) -> None:
    big = PNG_1PX + b"\x00" * (64 * 1024)

    response = await client.post(
        "/vision/gemma3", params={"message": "hi"}, files=[("images", ("big.png", big, "image/png"))]
    )

    assert response.status_code == 413
    assert "MINATO_MAX_IMAGE_BYTES" in response.json()["detail"]
    assert not chat.called


async def test_an_image_exactly_at_the_size_limit_is_accepted(client: Client, chat: Route) -> None:
    exact = PNG_1PX + b"\x00" * (64 * 1024 - len(PNG_1PX))

    response = await client.post(
        "/vision/gemma3", params={"message": "hi"}, files=[("images", ("exact.png", exact, "image/png"))]
    )

    assert response.status_code == 200
    assert sent(chat)["messages"] == [{"role": "user", "content": "hi", "images": [b64(exact)]}]


async def test_an_empty_image_part_is_a_422(client: Client, chat: Route) -> None:
    response = await client.post(
        "/vision/gemma3", params={"message": "hi"}, files=[("images", ("empty.png", b"", "image/png"))]
    )

    assert response.status_code == 422
    (item,) = response.json()["detail"]
    assert item["loc"] == ["body", "images", 0]
    assert item["msg"] == "is empty"
    assert not chat.called


async def test_a_form_without_an_image_is_a_422(client: Client, chat: Route) -> None:
    response = await client.post(
        "/vision/gemma3",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
        content=b'--xyz\r\nContent-Disposition: form-data; name="message"\r\n\r\nhi\r\n--xyz--\r\n',
    )

    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["body", "images"]]
    assert not chat.called


@pytest.mark.parametrize(
    ("headers", "content"),
    [
        pytest.param({"content-type": "application/json"}, b'{"images": []}', id="json"),
        pytest.param({"content-type": "image/png"}, PNG_1PX, id="raw-image"),
        pytest.param({"content-type": "multipart/form-data"}, b"--x\r\n", id="multipart-without-boundary"),
        pytest.param({}, b"", id="no-body"),
    ],
)
async def test_a_body_that_is_not_multipart_is_a_422(
    client: Client, chat: Route, headers: dict[str, str], content: bytes
) -> None:
    response = await client.post("/vision/gemma3", params={"message": "hi"}, headers=headers, content=content)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "content-type"]
    assert not chat.called


async def test_a_malformed_multipart_body_is_a_422_not_a_500(client: Client, chat: Route) -> None:
    response = await client.post(
        "/vision/gemma3",
        params={"message": "hi"},
        headers={"content-type": "multipart/form-data; boundary=xyz"},
        content=b"--xyz\r\nContent-Disposition: form-data; name=images\r\n\r\n\x89PNG garbage with no end",
    )

    assert response.status_code == 422
    assert not chat.called


@pytest.mark.parametrize(
    ("data", "files", "field"),
    [
        pytest.param({"prompt": "hi"}, [png()], "prompt", id="text-field"),
        pytest.param({}, [png(), ("image", ("a.png", PNG_1PX, "image/png"))], "image", id="misnamed-file"),
        pytest.param({}, [png(), ("message", ("m.txt", b"hi", "text/plain"))], "message", id="message-as-file"),
    ],
)
async def test_an_unknown_form_field_is_a_422(
    client: Client, chat: Route, data: dict[str, str], files: list[Upload], field: str
) -> None:
    response = await client.post("/vision/gemma3", params={"message": "hi"}, data=data, files=files)

    assert response.status_code == 422
    (item,) = response.json()["detail"]
    assert item["loc"] == ["body", field]
    assert item["type"] == "extra_forbidden"
    assert not chat.called


async def test_an_unknown_query_parameter_is_a_422(client: Client, chat: Route) -> None:
    response = await client.post("/vision/gemma3", params={"message": "hi", "temprature": "1"}, files=[png()])

    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["query", "temprature"]]
    assert not chat.called


async def test_a_model_without_vision_is_a_400_naming_its_capabilities(client: Client, ollama: ServedOllama) -> None:
    show_route = ollama.post("/api/show").respond(200, json=show(["completion", "tools"]))
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.post("/vision/llama3.2", params={"message": "hi"}, files=[png()])

    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "llama3.2" in detail
    assert "completion, tools" in detail
    assert show_route.calls.last.request.content == b'{"model":"llama3.2"}'
    assert not chat.called


async def test_a_model_reporting_no_capabilities_says_so(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/show").respond(200, json=show([]))
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.post("/vision/llama3.2:1b", params={"message": "hi"}, files=[png()])

    assert response.status_code == 400
    assert "none reported" in response.json()["detail"]
    assert not chat.called


async def test_an_unknown_model_is_a_404_before_its_capabilities_are_asked(
    client: Client, ollama: ServedOllama
) -> None:
    show_route = ollama.post("/api/show").respond(404, json=not_found("nope:latest"))
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.post("/vision/nope", params={"message": "hi"}, files=[png()])

    assert response.status_code == 404
    assert response.json()["detail"].startswith("model 'nope' not found in Ollama")
    assert show_route.call_count == 1, "an unlisted name is asked of /api/show once"
    assert not chat.called


async def test_a_listed_model_that_show_does_not_know_is_a_404_with_ollamas_reason(
    client: Client, ollama: ServedOllama
) -> None:
    ollama.get("/api/tags", name="tags").respond(200, json=catalogue("nope:latest"))
    show_route = ollama.post("/api/show").respond(404, json=not_found("nope:latest"))
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.post("/vision/nope", params={"message": "hi"}, files=[png()])

    assert response.status_code == 404
    assert response.json() == {"detail": "model 'nope:latest' not found"}
    assert show_route.calls.last.request.content == b'{"model":"nope"}'
    assert not chat.called


async def test_an_invalid_model_name_is_a_422_without_calling_ollama(client: Client, ollama: ServedOllama) -> None:
    show_route = ollama.post("/api/show").respond(200, json=show(VISION))

    response = await client.post("/vision/-x", params={"message": "hi"}, files=[png()])

    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["path", "model_name"]]
    assert not show_route.called


async def test_the_streamed_vision_route_relays_tokens(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/show").respond(200, json=show(VISION))
    chat = ollama.post("/api/chat").respond(200, content=ndjson(chat_token("A "), chat_token("pixel."), chat_done()))

    response = await client.post("/stream/vision/gemma3", params={"message": "What?"}, files=[png()])

    assert response.status_code == 200
    assert response.text == "A pixel."
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert sent(chat) == {
        "model": "gemma3",
        "messages": [{"role": "user", "content": "What?", "images": [b64(PNG_1PX)]}],
        "stream": True,
    }


async def test_the_streamed_vision_route_speaks_ndjson(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/show").respond(200, json=show(VISION))
    ollama.post("/api/chat").respond(200, content=ndjson(chat_token("A"), chat_done()))

    response = await client.post(
        "/stream/vision/gemma3",
        params={"message": "What?"},
        files=[png()],
        headers={"accept": "application/x-ndjson"},
    )

    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[0] == {"token": "A"}
    assert lines[1]["done"] is True


async def test_capabilities_are_looked_up_once_for_two_requests(client: Client, ollama: ServedOllama) -> None:
    show_route = ollama.post("/api/show").respond(200, json=show(VISION))
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    first = await client.post("/vision/gemma3", params={"message": "a"}, files=[png()])
    second = await client.post("/vision/gemma3:latest", params={"message": "b"}, files=[png()])

    assert (first.status_code, second.status_code) == (200, 200)
    assert show_route.call_count == 1
    assert chat.call_count == 2
    assert sent(chat)["model"] == "gemma3:latest"


async def test_a_body_over_the_total_limit_is_a_json_413(ollama: ServedOllama) -> None:
    ollama.post("/api/show").respond(200, json=show(VISION))
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())
    settings = Settings(ollama_url=ollama.url, max_body_bytes=1024, ollama_probe_interval=0)
    big = PNG_1PX + b"\x00" * 2048
    app = create_app(settings)

    async with AsyncTestClient(app=app) as client:
        response = await client.post(
            "/vision/gemma3", params={"message": "hi"}, files=[("images", ("big.png", big, "image/png"))]
        )

    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert "detail" in response.json()
    assert not chat.called
