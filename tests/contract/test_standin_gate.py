"""The stand-in's gated model: a stream emits token n only once the test has opened the gate past n,
and is otherwise the stand-in's ordinary NDJSON stream."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.support.served_ollama import ServedOllama


@pytest.fixture(name="served")
def fx_served() -> Iterator[ServedOllama]:
    served = ServedOllama()
    served.start()
    try:
        yield served
    finally:
        served.stop()


def test_a_gated_stream_emits_the_tokens_released_and_ends_once_all_are(served: ServedOllama) -> None:
    body = {"model": "standin/gated:3", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=served.url, timeout=30, trust_env=False) as client:
        assert client.post("/_standin/gate", json={"tokens": 1}).json() == {"tokens": 1}
        with client.stream("POST", "/api/chat", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            first = json.loads(next(lines))
            assert first["done"] is False
            assert first["message"]["content"]
            assert client.post("/_standin/gate", json={"tokens": 3}).json() == {"tokens": 3}
            rest = [json.loads(line) for line in lines if line]

        assert [chunk["done"] for chunk in rest] == [False, False, True]
        assert rest[-1]["eval_count"] == 3
        assert client.get("/_standin/gate").json() == {"tokens": 3}
        assert client.post("/_standin/gate", json={"tokens": "many"}).status_code == 400
