"""Minato as a real process, tried as an attacker and as a newcomer would: keys, labels, queued
uploads, typos, timeouts, images in a conversation and browsers reconnecting."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.payloads import PNG_1PX
from tests.support.servers import Backend, MinatoServer, start_minato, stop_minato

pytestmark = pytest.mark.e2e

USER = "e2e-user-key"
ADMIN = "e2e-admin-key"


@pytest.fixture(scope="module")
def keyed(standin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinatoServer]:
    """Minato with keys, open probes and a short first-token timeout, in front of the stand-in."""
    server = start_minato(
        standin_url,
        tmp_path_factory.mktemp("keyed") / "keyed.log",
        api_keys=USER,
        admin_keys=ADMIN,
        open_probes="true",
        first_token_timeout="2",
    )
    yield server
    stop_minato(server)


def _chat_requests(standin: httpx.Client) -> list[dict[str, object]]:
    return [r for r in standin.get("/_standin/requests").json() if r["path"] == "/api/chat"]


# -- access ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/docsanything?session=alice-1&message=hi",
        "/docs-x/llama3.2:1b?message=hi",
        "/%64ocs1?message=hi",
        "/docs/../llama3.2:1b?message=hi",
        "/stream/docs?message=hi",
        "/healthz?message=hi",
    ],
)
def test_look_alikes_of_the_open_routes_need_a_key(keyed: MinatoServer, standin: httpx.Client, path: str) -> None:
    response = httpx.get(keyed.url + path, timeout=10)

    assert response.status_code in {401, 404}
    assert response.status_code == 401 or "Error 404" in response.text  # the docs router's own page
    assert not _chat_requests(standin)


@pytest.mark.parametrize("path", ["/health", "/docs", "/docs/openapi.json", "/docs/scalar"])
def test_the_open_routes_answer_without_a_key(keyed: MinatoServer, path: str) -> None:
    assert httpx.get(keyed.url + path, timeout=10).status_code == 200


def test_a_user_key_cannot_unload_or_pin_a_model_but_an_admin_key_can(
    keyed: MinatoServer, standin: httpx.Client, backend: Backend
) -> None:
    for keep_alive in ("0", "-1"):
        refused = httpx.get(
            f"{keyed.url}/{backend.model}",
            params={"message": "hi", "keep_alive": keep_alive, "num_ctx": "2147483647"},
            headers={"X-API-Key": USER},
            timeout=10,
        )
        assert refused.status_code == 403
    assert not _chat_requests(standin)

    allowed = httpx.get(
        f"{keyed.url}/{backend.model}",
        params={"message": "hi", "keep_alive": "-1"},
        headers={"X-API-Key": ADMIN},
        timeout=10,
    )
    assert allowed.status_code == 200


# -- resource exhaustion ----------------------------------------------------------------------------


def test_a_hostile_loop_of_invented_paths_and_models_adds_no_metric_series(
    keyed: MinatoServer, standin: httpx.Client
) -> None:
    with httpx.Client(base_url=keyed.url, timeout=10) as client:
        for index in range(400):
            client.get(f"/junk-{index}/{'x' * 40}")  # no key: 401
            client.get(f"/invented-{index}", params={"message": "hi"}, headers={"X-API-Key": USER})  # 404
            client.get(f"/stream/invented-{index}", params={"message": "hi"}, headers={"X-API-Key": USER})
            client.request("PROPFIND", f"/no/route/{index}")
        exposition = client.get("/metrics").text

    installed = {model["name"] for model in standin.get("/api/tags").json()["models"]}
    routes, models, methods = set(), set(), set()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            routes.add(sample.labels.get("route"))
            models.add(sample.labels.get("model"))
            methods.add(sample.labels.get("method"))
    assert "unmatched" in routes
    assert not [route for route in routes if route and ("junk" in route or "invented" in route)]
    assert models <= {None, "", "other"} | installed, models - installed
    assert methods <= {None, "GET", "POST", "other"}
    assert len(exposition) < 60_000, "1,600 junk requests must not grow the exposition"


# -- newcomers' typos --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/favicon.ico", "no such route"),
        ("/models-list", "did you mean /models_list"),
        ("/scalar", "did you mean /docs/scalar"),
        ("/stream/api/tags", "reserved for Ollama's and OpenAI's APIs"),
        ("/stream/v1/models", "reserved for Ollama's and OpenAI's APIs"),
    ],
)
def test_a_path_that_is_neither_a_route_nor_a_model_is_a_404_saying_so(
    http: httpx.Client, path: str, says: str
) -> None:
    response = http.get(path)

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert says in response.json()["detail"]


# -- correctness --------------------------------------------------------------------------------------


def test_the_first_token_timeout_applies_to_whole_answers(keyed: MinatoServer, standin: httpx.Client) -> None:
    # The client's own timeout bounds the test: without the fix this waited for the 600 s request timeout.
    response = httpx.get(
        f"{keyed.url}/standin/hang:latest", params={"message": "hi"}, headers={"X-API-Key": USER}, timeout=20
    )

    assert response.status_code == 504
    assert "within 2 s" in response.json()["detail"]


def test_a_text_model_can_follow_a_picture_in_a_conversation(http: httpx.Client, backend: Backend) -> None:
    if backend.vision_model is None:
        pytest.skip("no vision model on this Ollama")
    session = f"picture-{time.monotonic_ns()}"
    seen = http.post(
        f"/vision/{backend.vision_model}",
        params={"message": "What is in this picture?", "session": session},
        files=[("images", ("dot.png", PNG_1PX, "image/png"))],
    )
    assert seen.status_code == 200

    follow_up = http.get(f"/{backend.model}", params={"message": "What colour was it?", "session": session})

    assert follow_up.status_code == 200, follow_up.text
    history = http.get(f"/chat/{session}").json()
    assert history["totals"]["images"] == 1, "the picture stays in the conversation"


def test_an_abandoned_stream_is_logged_as_499(minato: MinatoServer, standin: httpx.Client) -> None:
    with httpx.Client(base_url=minato.url, timeout=10) as client:
        with client.stream("GET", "/stream/standin/slow", params={"message": "hi"}) as response:
            next(response.iter_bytes())
        deadline = time.monotonic() + 5
        line: dict[str, object] | None = None
        while line is None and time.monotonic() < deadline:
            lines = [json.loads(text) for text in minato.log_lines() if text.startswith("{")]
            found = [entry for entry in lines if entry.get("event") == "request" and entry.get("status") == 499]
            line = found[-1] if found else None
            time.sleep(0.05)

    assert line is not None, "the abandoned stream is logged as 499"
    assert line["outcome"] == "aborted"
    assert line["route"] == "/stream/{model_name}"


# -- browsers ----------------------------------------------------------------------------------------------


def test_an_eventsource_reconnecting_after_done_gets_204_and_nothing_runs_again(
    http: httpx.Client, standin: httpx.Client, backend: Backend
) -> None:
    sse = {"Accept": "text/event-stream"}
    first = http.get(f"/stream/{backend.model}", params={"message": "hi"}, headers=sse)
    ids = [line.removeprefix("id: ") for line in first.text.splitlines() if line.startswith("id: ")]
    assert ids
    assert ids[-1].endswith("-end")
    assert len(set(ids)) == len(ids)
    before = len(_chat_requests(standin))

    again = http.get(f"/stream/{backend.model}", params={"message": "hi"}, headers={**sse, "Last-Event-ID": ids[-1]})

    assert again.status_code == 204
    assert again.content == b""
    assert len(_chat_requests(standin)) == before
