"""The limit and timing headers, read by real clients from Minato as a real process in front of the
stand-in: openai-python's raw response, Minato's own ``GET /{model}``, and a ``Server-Timing`` queue
entry that grows when a request had to wait for the one generation slot."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import MinatoServer, start_minato, stop_minato
from tests.support.standin.process import StandInProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

LIMITED = "e2e-headers-limited"
ADMIN = "e2e-headers-admin"
RATE = 50
QUOTA = 100_000
MODEL = "llama3.2:1b"
#: A whole answer of three tokens that the stand-in writes only once a test opens its gate.
GATED = "standin/gated:3"
QUEUE = re.compile(r"(?:^|, )queue;dur=(\d+(?:\.\d+)?)")


@pytest.fixture(scope="module")
def own_standin() -> Iterator[StandInProcess]:
    """A stand-in of this module's own (the default catalogue, with the gated models): its gate is this
    module's to open and close."""
    standin = StandInProcess()
    yield standin
    standin.stop()


@pytest.fixture(scope="module")
def server(own_standin: StandInProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinatoServer]:
    """Minato with one generation slot, a key with a rate and a quota, and an admin key (for /metrics)."""
    directory = tmp_path_factory.mktemp("headers")
    keys = directory / "keys.toml"
    keys.write_text(f'[keys.limited]\nkey = "{LIMITED}"\nrequests_per_minute = {RATE}\ntokens_per_day = {QUOTA}\n')
    minato = start_minato(
        own_standin.url, directory / "minato.log", keys_file=str(keys), admin_keys=ADMIN, max_generations="1"
    )
    yield minato
    stop_minato(minato)


def _queue_ms(response: httpx.Response) -> float:
    match = QUEUE.search(response.headers["server-timing"])
    assert match is not None, response.headers["server-timing"]
    return float(match.group(1))


def test_openai_python_reads_the_limits_and_they_count_down(server: MinatoServer) -> None:
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    with openai.OpenAI(base_url=server.url + "/v1", api_key=LIMITED, max_retries=0, timeout=30) as client:
        first = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
        second = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)

    used = first.parse().usage
    assert used is not None
    assert used.completion_tokens > 0
    assert first.headers["x-ratelimit-limit-requests"] == str(RATE)
    assert first.headers["x-ratelimit-limit-tokens"] == str(QUOTA)
    assert int(second.headers["x-ratelimit-remaining-requests"]) < int(first.headers["x-ratelimit-remaining-requests"])
    assert int(second.headers["x-ratelimit-remaining-tokens"]) < int(first.headers["x-ratelimit-remaining-tokens"])
    assert int(first.headers["x-ratelimit-remaining-tokens"]) <= QUOTA - used.completion_tokens
    assert re.fullmatch(r"\d+(\.\d+)?(ms|s)", first.headers["x-ratelimit-reset-requests"])
    assert first.headers["x-ratelimit-reset-tokens"].startswith("24h"), "its own tokens count for 24 h"
    assert QUEUE.search(first.headers["server-timing"])
    assert "ollama;dur=" in first.headers["server-timing"]


def test_minatos_own_route_carries_the_limits_and_the_timings(server: MinatoServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30, headers={"X-API-Key": LIMITED}) as http:
        answer = http.get(f"/{MODEL}", params={"message": "hi"})
        models = http.get("/models_list/")

    assert answer.status_code == 200
    assert answer.headers["x-ratelimit-limit-requests"] == str(RATE)
    assert int(answer.headers["x-ratelimit-remaining-requests"]) < RATE
    assert int(answer.headers["x-ratelimit-remaining-tokens"]) < QUOTA
    assert re.fullmatch(r"queue;dur=[\d.]+, minato;dur=[\d.]+, ollama;dur=[\d.]+", answer.headers["server-timing"])
    assert "x-ratelimit-limit-requests" not in models.headers, "a route that generates nothing"
    assert "server-timing" not in models.headers


def _queue_depth(metrics: httpx.Client) -> float:
    response = metrics.get("/metrics")
    response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        if family.name == "minato_queue_depth":
            return sum(sample.value for sample in family.samples)
    raise AssertionError("/metrics has no minato_queue_depth gauge")


@pytest.mark.timeout(120)
def test_a_request_that_waited_for_the_slot_says_so_in_its_queue_timing(
    server: MinatoServer, own_standin: StandInProcess
) -> None:
    with (
        httpx.Client(base_url=own_standin.url, timeout=10) as standin,
        httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": LIMITED}) as http,
        httpx.Client(base_url=server.url, timeout=10, headers={"X-API-Key": ADMIN}) as admin,
    ):
        standin.post("/_standin/gate", json={"tokens": 0}).raise_for_status()
        unhurried = http.get(f"/{MODEL}", params={"message": "nobody holds the slot"})
        holder: list[httpx.Response] = []
        # The gated answer holds the one slot until the gate opens.
        first = threading.Thread(target=lambda: holder.append(http.get(f"/{GATED}", params={"message": "hold"})))
        first.start()
        try:
            eventually(
                lambda: [
                    event
                    for event in standin.get("/_standin/events").json()
                    if event["model"].startswith("standin/gated")
                ],
                bool,
                "the gated answer reached the stand-in",
            )
            waited: list[httpx.Response] = []
            second = threading.Thread(target=lambda: waited.append(http.get(f"/{MODEL}", params={"message": "wait"})))
            second.start()
            eventually(lambda: _queue_depth(admin), lambda depth: depth >= 1, "the second request is queued")
        finally:
            standin.post("/_standin/gate", json={"tokens": 3}).raise_for_status()
            first.join(timeout=60)
        second.join(timeout=60)

    assert unhurried.status_code == 200
    assert [response.status_code for response in holder + waited] == [200, 200]
    assert _queue_ms(waited[0]) > _queue_ms(unhurried), (
        f"waited {waited[0].headers['server-timing']}; did not wait {unhurried.headers['server-timing']}"
    )
    assert _queue_ms(waited[0]) > 0.0
