"""Minato with a user key and an admin key in front of the stand-in, for the native door's client and load tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import MinatoServer, start_minato, stop_minato

USER: Final = "native-door-user-key"


ADMIN: Final = "native-door-admin-key"


SETTLE_S: Final = 10.0


T = TypeVar("T")


@pytest.fixture(scope="module", name="door")
def fx_door(standin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinatoServer]:
    """Minato with one user key and one admin key, in front of the stand-in; no periodic probe, so
    every request the stand-in records came from a client's call."""
    server = start_minato(
        standin_url,
        tmp_path_factory.mktemp("native-door") / "door.log",
        api_keys=USER,
        admin_keys=ADMIN,
        ollama_probe_interval="0",
    )
    yield server
    stop_minato(server)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _events(standin: httpx.Client, model: str) -> list[dict[str, Any]]:
    return [event for event in standin.get("/_standin/events").json() if event["model"] == model]


def _tokens_generated(door: MinatoServer) -> float:
    exposition = httpx.get(f"{door.url}/metrics", headers=_bearer(ADMIN), timeout=10)
    assert exposition.status_code == 200
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition.text)
        for sample in family.samples
        if sample.name == "minato_tokens_generated_total"
    )
