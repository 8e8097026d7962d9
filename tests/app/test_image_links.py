"""Images as links (``image_url``, fetched by Minato, guarded against SSRF) and as base64 form fields.

Fetching is tested against a real aiohttp server on 127.0.0.1, reached as ``localhost`` through the
allow-list; refusals use hosts that resolve to forbidden addresses, so they never touch a network.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator
from typing import TypedDict

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from structlog.testing import capture_logs

from minato.settings import Settings
from minato.web.app import create_app
from tests.support.image_server import LIMIT, ImageServer, _start_image_server, fx_fake_dns, fx_server, fx_settings  # noqa: F401 - fixtures, found by name
from tests.support.payloads import JPEG_HEADER, PNG_1PX, chat_answer, chat_done, chat_token, ndjson, show
from tests.support.served_ollama import Route, ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
VISION = ["completion", "vision"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sent_images(route: Route) -> list[str]:
    body = json.loads(route.calls.last.request.content)
    images: list[str] = body["messages"][-1]["images"]
    return images


def detail(response: httpx.Response) -> dict[str, object]:
    (item,) = response.json()["detail"]
    assert isinstance(item, dict)
    return item


class Multipart(TypedDict):
    """The ``headers`` and ``content`` arguments of an httpx request, to pass as ``**form(...)``."""

    headers: dict[str, str]
    content: bytes


def form(*fields: tuple[str, str]) -> Multipart:
    """Request arguments for a ``multipart/form-data`` body of text fields only (httpx would send
    text-only ``data`` urlencoded)."""
    boundary = "minato-test-boundary"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    )
    return {
        "headers": {"content-type": f"multipart/form-data; boundary={boundary}"},
        "content": body + f"--{boundary}--\r\n".encode(),
    }


@pytest.fixture(name="chat")
def fx_chat(ollama: ServedOllama) -> Route:
    """A vision-capable model that answers."""
    ollama.post("/api/show").respond(200, json=show(VISION))
    return ollama.post("/api/chat").respond(200, json=chat_answer("A single pixel.", model="gemma3"))


@pytest.fixture(name="strict_client")
async def fx_strict_client(settings: Settings, ollama: ServedOllama) -> AsyncIterator[Client]:
    """Minato with an empty allow-list: only public addresses may be fetched."""
    strict = msgspec.structs.replace(settings, image_fetch_allow=())
    app = create_app(strict)
    async with AsyncTestClient(app=app) as client:
        yield client


# -- links that are fetched -----------------------------------------------------------------------


async def test_a_linked_image_goes_upstream_as_padded_base64(client: Client, chat: Route, server: ImageServer) -> None:
    response = await client.post(
        "/vision/gemma3", params={"message": "What is this?", "image_url": f"{server.base}/pixel.png"}
    )

    assert response.status_code == 200
    assert response.json()["response"] == "A single pixel."
    assert json.loads(chat.calls.last.request.content)["messages"] == [
        {"role": "user", "content": "What is this?", "images": [b64(PNG_1PX)]}
    ]
    assert server.hits == ["/pixel.png"]


async def test_links_only_need_no_body_and_no_content_type(client: Client, chat: Route, server: ImageServer) -> None:
    response = await client.post(
        "/vision/gemma3",
        params=[
            ("message", "hi"),
            ("image_url", f"{server.base}/pixel.png"),
            ("image_url", f"{server.base}/photo.jpg"),
        ],
    )

    assert response.status_code == 200
    assert sent_images(chat) == [b64(PNG_1PX), b64(JPEG_HEADER)]


async def test_a_link_can_be_a_form_field_and_comes_after_query_links(
    client: Client, chat: Route, server: ImageServer
) -> None:
    response = await client.post(
        "/vision/gemma3",
        params={"image_url": f"{server.base}/pixel.png"},
        **form(("message", "hi"), ("image_url", f"{server.base}/photo.jpg")),
    )

    assert response.status_code == 200
    assert sent_images(chat) == [b64(PNG_1PX), b64(JPEG_HEADER)]


async def test_the_streamed_route_takes_links_too(client: Client, ollama: ServedOllama, server: ImageServer) -> None:
    ollama.post("/api/show").respond(200, json=show(VISION))
    chat = ollama.post("/api/chat").respond(200, content=ndjson(chat_token("A "), chat_token("pixel."), chat_done()))

    response = await client.post(
        "/stream/vision/gemma3", params={"message": "What?", "image_url": f"{server.base}/pixel.png"}
    )

    assert response.status_code == 200
    assert response.text == "A pixel."
    assert sent_images(chat) == [b64(PNG_1PX)]


async def test_images_reach_ollama_as_uploads_then_base64_then_links(
    client: Client, chat: Route, server: ImageServer
) -> None:
    gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + b"\x00" * 16

    response = await client.post(
        "/vision/gemma3",
        params={"message": "hi", "image_url": f"{server.base}/photo.jpg"},
        data={"image_base64": b64(gif)},
        files=[("images", ("a.png", PNG_1PX, "image/png"))],
    )

    assert response.status_code == 200
    assert sent_images(chat) == [b64(PNG_1PX), b64(gif), b64(JPEG_HEADER)]


async def test_redirects_are_followed_up_to_the_limit(client: Client, chat: Route, server: ImageServer) -> None:
    response = await client.post("/vision/gemma3", params={"message": "hi", "image_url": f"{server.base}/hop/2"})

    assert response.status_code == 200
    assert sent_images(chat) == [b64(PNG_1PX)]
    assert server.hits == ["/hop/2", "/hop/1", "/pixel.png"]


async def test_one_redirect_too_many_is_a_422(client: Client, chat: Route, server: ImageServer) -> None:
    response = await client.post("/vision/gemma3", params={"message": "hi", "image_url": f"{server.base}/hop/4"})

    assert response.status_code == 422
    item = detail(response)
    assert item["loc"] == ["query", "image_url", 0]
    assert "MINATO_IMAGE_FETCH_MAX_REDIRECTS" in str(item["msg"])
    assert not chat.called
    assert len(server.hits) == 4  # the first URL and three redirects; the fourth is not followed


async def test_a_redirect_from_an_allowed_host_to_loopback_is_refused(
    client: Client, chat: Route, server: ImageServer
) -> None:
    response = await client.post("/vision/gemma3", params={"message": "hi", "image_url": f"{server.base}/to-loopback"})

    assert response.status_code == 422
    msg = str(detail(response)["msg"])
    assert "redirected" in msg
    assert "loopback" in msg
    assert server.hits == ["/to-loopback"]  # the image behind the redirect was never asked for
    assert not chat.called


async def test_a_redirect_to_another_scheme_is_refused(client: Client, chat: Route, server: ImageServer) -> None:
    response = await client.post("/vision/gemma3", params={"message": "hi", "image_url": f"{server.base}/to-file"})

    assert response.status_code == 422
    assert "scheme must be http or https" in str(detail(response)["msg"])
    assert not chat.called


@pytest.mark.parametrize("path", ["/huge", "/huge-chunked"])
async def test_a_body_over_the_image_limit_is_a_413(
    client: Client, chat: Route, server: ImageServer, path: str
) -> None:
    response = await client.post("/vision/gemma3", params={"message": "hi", "image_url": f"{server.base}{path}"})

    assert response.status_code == 413
    assert response.json()["detail"].startswith("image_url[0] is larger than 65536 bytes")
    assert not chat.called


async def test_a_slow_body_times_out_as_a_422(client: Client, chat: Route, server: ImageServer) -> None:
    response = await client.post("/vision/gemma3", params={"message": "hi", "image_url": f"{server.base}/slow"})

    assert response.status_code == 422
    item = detail(response)
    assert item["loc"] == ["query", "image_url", 0]
    assert "timed out" in str(item["msg"])
    assert not chat.called


async def test_a_text_body_is_not_an_image(client: Client, chat: Route, server: ImageServer) -> None:
    response = await client.post("/vision/gemma3", params={"message": "hi", "image_url": f"{server.base}/text"})

    assert response.status_code == 422
    assert "is not a PNG, JPEG, WebP, GIF or BMP image" in str(detail(response)["msg"])
    assert not chat.called


async def test_an_error_status_from_the_link_is_a_422_naming_it(
    client: Client, chat: Route, server: ImageServer
) -> None:
    response = await client.post(
        "/vision/gemma3",
        params=[("message", "hi"), ("image_url", f"{server.base}/pixel.png"), ("image_url", f"{server.base}/missing")],
    )

    assert response.status_code == 422
    item = detail(response)
    assert item["loc"] == ["query", "image_url", 1]
    assert item["msg"] == "answered HTTP 404"
    assert not chat.called


async def test_a_refused_form_link_points_at_the_body(client: Client, chat: Route) -> None:
    response = await client.post(
        "/vision/gemma3", params={"message": "hi"}, **form(("image_url", "http://10.0.0.1/a.png"))
    )

    assert response.status_code == 422
    assert detail(response)["loc"] == ["body", "image_url", 0]
    assert not chat.called


async def test_the_connection_goes_to_the_checked_address_without_a_second_lookup(
    ollama: ServedOllama, chat: Route, server: ImageServer, settings: Settings, fake_dns: dict[str, list[str]]
) -> None:
    # "images.internal" exists only in the fake table, so the fetch can only succeed by connecting
    # to the address the check saw.
    fake_dns["images.internal"] = ["127.0.0.1"]
    allowed = msgspec.structs.replace(settings, image_fetch_allow=("Images.Internal",))
    app = create_app(allowed)

    async with AsyncTestClient(app=app) as client:
        response = await client.post(
            "/vision/gemma3",
            params={"message": "hi", "image_url": f"http://images.internal:{server.port}/pixel.png"},
        )

    assert response.status_code == 200
    assert sent_images(chat) == [b64(PNG_1PX)]


async def test_fetch_logs_name_the_host_but_not_the_path_or_query(
    client: Client, chat: Route, server: ImageServer
) -> None:
    with capture_logs() as logs:
        response = await client.post(
            "/vision/gemma3",
            params={"message": "hi", "image_url": f"{server.base}/pixel.png?token=s3cret"},
        )

    assert response.status_code == 200
    (fetched,) = [entry for entry in logs if entry["event"] == "image_fetched"]
    assert fetched["host"] == "localhost"
    assert "s3cret" not in repr(logs)
    assert "pixel.png" not in repr(logs)


# -- links that are refused before anything is fetched ---------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/a.png", "loopback"),
        ("http://10.0.0.1/a.png", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]/a.png", "loopback"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "private"),
        ("http://0.0.0.0/a.png", "unspecified"),
        ("http://100.64.0.1/a.png", "shared"),
        ("http://[::ffff:127.0.0.1]/a.png", "loopback"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://[64:ff9b::a00:1]/a.png", "private"),
        ("http://[2002:7f00:1::]/a.png", "loopback"),
        ("http://224.0.0.1/a.png", "multicast"),
        ("http://240.0.0.1/a.png", "reserved"),
        ("http://[fe80::1]/a.png", "link-local"),
        ("http://127.1/a.png", "loopback"),
        ("http://2130706433/a.png", "loopback"),
    ],
)
async def test_links_to_non_public_addresses_are_refused(client: Client, chat: Route, url: str, reason: str) -> None:
    response = await client.post("/vision/gemma3", params={"message": "hi", "image_url": url})

    assert response.status_code == 422
    item = detail(response)
    assert item["loc"] == ["query", "image_url", 0]
    assert f"resolves to a {reason}" in str(item["msg"])
    assert not chat.called


async def test_a_name_that_resolves_to_loopback_is_refused_unless_allowed(
    strict_client: Client, chat: Route, server: ImageServer
) -> None:
    response = await strict_client.post(
        "/vision/gemma3", params={"message": "hi", "image_url": f"{server.base}/pixel.png"}
    )

    assert response.status_code == 422
    assert "localhost which resolves to a loopback address" in str(detail(response)["msg"])
    assert server.hits == []
    assert not chat.called


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "scheme must be http or https"),
        ("ftp://x/a.png", "scheme must be http or https"),
        ("gopher://localhost:70/", "scheme must be http or https"),
        ("http://user:pass@localhost/a.png", "user name or password"),
        ("http://user@localhost/a.png", "user name or password"),
        ("http:///a.png", "has no host"),
        ("just some words", "scheme must be http or https"),
        ("http://[::1/a.png", "is not a valid URL"),
    ],
)
async def test_links_that_are_not_plain_http_urls_are_refused(
    client: Client, chat: Route, server: ImageServer, url: str, reason: str
) -> None:
    response = await client.post("/vision/gemma3", params={"message": "hi", "image_url": url})

    assert response.status_code == 422
    item = detail(response)
    assert item["loc"] == ["query", "image_url", 0]
    assert reason in str(item["msg"])
    assert server.hits == []
    assert not chat.called


async def test_every_resolved_address_must_be_public(
    client: Client, chat: Route, fake_dns: dict[str, list[str]]
) -> None:
    fake_dns["mixed.example"] = ["93.184.215.14", "10.0.0.1"]

    response = await client.post("/vision/gemma3", params={"message": "hi", "image_url": "http://mixed.example/a.png"})

    assert response.status_code == 422
    assert "mixed.example which resolves to a private address" in str(detail(response)["msg"])
    assert not chat.called


# -- counting images across uploads, base64 fields and links ---------------------------------------


async def test_uploads_and_links_count_together_toward_the_limit(
    client: Client, chat: Route, server: ImageServer
) -> None:
    response = await client.post(
        "/vision/gemma3",
        params=[
            ("message", "hi"),
            ("image_url", f"{server.base}/pixel.png"),
            ("image_url", f"{server.base}/pixel.png"),
        ],
        files=[("images", ("a.png", PNG_1PX, "image/png")), ("images", ("b.png", PNG_1PX, "image/png"))],
    )

    assert response.status_code == 422
    item = detail(response)
    assert item["loc"] == ["body", "images"]
    assert "at most 3 images" in str(item["msg"])
    assert server.hits == []  # refused before anything was downloaded
    assert not chat.called


async def test_too_many_query_links_are_refused_before_the_body_is_read(
    client: Client, chat: Route, server: ImageServer
) -> None:
    response = await client.post(
        "/vision/gemma3", params=[("message", "hi"), *[("image_url", f"{server.base}/pixel.png")] * 4]
    )

    assert response.status_code == 422
    assert detail(response)["loc"] == ["query", "image_url"]
    assert server.hits == []
    assert not chat.called


async def test_base64_fields_count_too(client: Client, chat: Route, server: ImageServer) -> None:
    response = await client.post(
        "/vision/gemma3",
        params={"message": "hi", "image_url": f"{server.base}/pixel.png"},
        **form(*[("image_base64", b64(PNG_1PX))] * 3),
    )

    assert response.status_code == 422
    assert detail(response)["loc"] == ["body", "image_base64"]
    assert not chat.called


async def test_exactly_the_limit_across_all_three_kinds_is_accepted(
    client: Client, chat: Route, server: ImageServer
) -> None:
    response = await client.post(
        "/vision/gemma3",
        params={"message": "hi", "image_url": f"{server.base}/pixel.png"},
        data={"image_base64": b64(JPEG_HEADER)},
        files=[("images", ("a.png", PNG_1PX, "image/png"))],
    )

    assert response.status_code == 200
    assert sent_images(chat) == [b64(PNG_1PX), b64(JPEG_HEADER), b64(PNG_1PX)]


async def test_image_url_is_a_known_parameter_but_a_typo_of_it_is_not(client: Client, chat: Route) -> None:
    response = await client.post("/vision/gemma3", params={"message": "hi", "image_urls": "http://x/a.png"})

    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["query", "image_urls"]]
    assert not chat.called


async def test_image_url_is_still_unknown_on_text_routes(client: Client, ollama: ServedOllama) -> None:
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2", params={"message": "hi", "image_url": "http://x/a.png"})

    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["query", "image_url"]]
    assert not chat.called


async def test_a_body_with_links_must_still_be_multipart(client: Client, chat: Route, server: ImageServer) -> None:
    response = await client.post(
        "/vision/gemma3",
        params={"message": "hi", "image_url": f"{server.base}/pixel.png"},
        headers={"content-type": "application/json"},
        content=b"{}",
    )

    assert response.status_code == 422
    assert detail(response)["loc"] == ["header", "content-type"]
    assert server.hits == []
    assert not chat.called


async def test_a_body_without_content_type_next_to_links_is_refused(
    client: Client, chat: Route, server: ImageServer
) -> None:
    response = await client.post(
        "/vision/gemma3", params={"message": "hi", "image_url": f"{server.base}/pixel.png"}, content=b"surprise"
    )

    assert response.status_code == 422
    assert detail(response)["loc"] == ["header", "content-type"]
    assert not chat.called


@pytest.mark.parametrize("url", ["", "   ", "http://x/" + "a" * 9000])
async def test_an_empty_or_overlong_link_is_a_422(client: Client, chat: Route, url: str) -> None:
    response = await client.post("/vision/gemma3", params={"message": "hi", "image_url": url})

    assert response.status_code == 422
    assert detail(response)["loc"] == ["query", "image_url", 0]
    assert not chat.called


async def test_a_text_only_model_is_refused_before_any_link_is_fetched(
    client: Client, ollama: ServedOllama, server: ImageServer
) -> None:
    ollama.post("/api/show").respond(200, json=show(["completion"]))

    response = await client.post("/vision/llama3.2", params={"message": "hi", "image_url": f"{server.base}/pixel.png"})

    assert response.status_code == 400
    assert server.hits == []


# -- base64 form fields ---------------------------------------------------------------------------


def wrapped(text: str, width: int = 8) -> str:
    return "\r\n".join(text[i : i + width] for i in range(0, len(text), width))


@pytest.mark.parametrize(
    "field_value",
    [
        pytest.param(b64(PNG_1PX), id="standard"),
        pytest.param(f"data:image/png;base64,{b64(PNG_1PX)}", id="data-url"),
        pytest.param(f"DATA:image/png;charset=binary;BASE64,{b64(PNG_1PX)}", id="data-url-parameters"),
        pytest.param(f"data:;base64,{b64(PNG_1PX)}", id="data-url-without-type"),
        pytest.param(wrapped(b64(PNG_1PX)) + "\n", id="line-breaks"),
        pytest.param(f"  {b64(PNG_1PX)}\n\n", id="surrounding-space"),
        pytest.param(base64.urlsafe_b64encode(PNG_1PX).decode(), id="url-safe"),
        pytest.param(b64(PNG_1PX).rstrip("="), id="no-padding"),
        pytest.param(
            "data:image/png;base64," + wrapped(base64.urlsafe_b64encode(PNG_1PX).decode().rstrip("="), 5),
            id="everything-at-once",
        ),
    ],
)
async def test_base64_fields_reach_ollama_as_standard_padded_base64(
    client: Client, chat: Route, field_value: str
) -> None:
    response = await client.post("/vision/gemma3", **form(("message", "hi"), ("image_base64", field_value)))

    assert response.status_code == 200
    assert sent_images(chat) == [b64(PNG_1PX)]


async def test_url_safe_characters_are_translated(client: Client, chat: Route) -> None:
    # Bytes chosen so the standard alphabet needs both "+" and "/".
    image = PNG_1PX + b"\xfb\xff\xbf"
    assert "+" in b64(image) or "/" in b64(image)

    response = await client.post(
        "/vision/gemma3",
        **form(("message", "hi"), ("image_base64", base64.urlsafe_b64encode(image).decode())),
    )

    assert response.status_code == 200
    assert sent_images(chat) == [b64(image)]


@pytest.mark.parametrize(
    ("field_value", "msg"),
    [
        pytest.param("this is not base64!", "is not valid base64", id="garbage"),
        pytest.param("QUJD=RA==", "is not valid base64", id="padding-in-the-middle"),
        pytest.param("Q", "is not valid base64", id="one-character"),
        pytest.param(b64(b"just some text"), "is not a PNG", id="not-an-image"),
        pytest.param(f"data:text/plain;base64,{b64(PNG_1PX)}", "not an image", id="data-url-of-text"),
        pytest.param(f"data:image/png,{b64(PNG_1PX)}", "not base64", id="data-url-not-base64"),
        pytest.param("data:image/png;base64,", "is empty", id="empty-data-url"),
        pytest.param("   ", "is empty", id="blank"),
    ],
)
async def test_a_bad_base64_field_is_a_422_naming_it(client: Client, chat: Route, field_value: str, msg: str) -> None:
    response = await client.post(
        "/vision/gemma3",
        **form(("message", "hi"), ("image_base64", b64(PNG_1PX)), ("image_base64", field_value)),
    )

    assert response.status_code == 422
    item = detail(response)
    assert item["loc"] == ["body", "image_base64", 1]
    assert msg in str(item["msg"])
    assert not chat.called


@pytest.mark.parametrize("line_breaks", [False, True])
async def test_a_base64_image_over_the_size_limit_is_a_413(client: Client, chat: Route, line_breaks: bool) -> None:
    text = b64(PNG_1PX + b"\x00" * LIMIT)
    response = await client.post(
        "/vision/gemma3",
        **form(("message", "hi"), ("image_base64", wrapped(text, 76) if line_breaks else text)),
    )

    assert response.status_code == 413
    assert response.json()["detail"].startswith("image_base64[0] is larger than 65536 bytes")
    assert not chat.called


async def test_a_base64_image_exactly_at_the_limit_is_accepted(client: Client, chat: Route) -> None:
    exact = PNG_1PX + b"\x00" * (LIMIT - len(PNG_1PX))

    response = await client.post("/vision/gemma3", **form(("message", "hi"), ("image_base64", wrapped(b64(exact), 76))))

    assert response.status_code == 200
    assert sent_images(chat) == [b64(exact)]


async def test_a_huge_base64_field_is_stopped_while_it_streams_in(client: Client, chat: Route) -> None:
    response = await client.post("/vision/gemma3", **form(("message", "hi"), ("image_base64", "A" * (LIMIT * 2))))

    assert response.status_code == 413
    assert not chat.called


async def test_a_refused_image_host_is_named_without_aiohttps_words(client: Client, chat: Route) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: connecting is refused

    with capture_logs() as events:
        response = await client.post(
            "/vision/gemma3", params={"message": "hi", "image_url": f"http://localhost:{port}/a.png"}
        )

    assert response.status_code == 422
    item = detail(response)
    assert item["loc"] == ["query", "image_url", 0]
    assert item["msg"] == "could not be fetched: the connection was refused"
    assert "ClientConnectorError" not in response.text
    assert any(event["event"] == "image_fetch_failed" for event in events)
    assert not chat.called
