"""A real Prometheus scrapes a real Minato with ``deploy/prometheus.yml``'s settings, and every PromQL
expression of ``deploy/grafana/minato.json`` returns data through Prometheus' HTTP API.

Prometheus is Debian's package (2.42 here; ``.ci/run`` installs it). It reads a scrape's
``Content-Type`` more leniently than Prometheus 3, which ``deploy/compose.yaml`` pins: 2.42 took the
doubled ``charset`` Minato used to send, 3 refuses it with Go's "mime: duplicate parameter name".
So the header is also checked with a reader as strict as Go's, here on the real process and in
``tests/unit/test_media_type.py``.

The scrape config is generated from ``deploy/prometheus.yml``: its job as it is (metrics path,
scheme, the ``authorization`` Prometheus sends its key with), only the targets, the intervals (1 s)
and the key file's path replaced. Minato runs with keys required (Prometheus sends an admin key) in
front of two stand-ins and a Redis, with one generation slot and a queue of one so a refusal by
backpressure can be made on purpose. The same traffic runs twice with a scrape before, between and
after: a counter first scraped with its whole count has no rate, and a histogram whose buckets did
not move has no quantile, so every series has to exist before it moves.
"""

from __future__ import annotations

import concurrent.futures
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from tests.support import prometheus_server
from tests.support.dashboard import dashboard, expressions
from tests.support.media_type import MediaType, parse_media_type
from tests.support.prometheus_server import PrometheusMissingError, PrometheusServer, scrape_config
from tests.support.servers import MinatoServer, start_minato, stop_minato
from tests.support.standin.process import StandInProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

ADMIN: Final = "prometheus-e2e-admin-key-000001"
USER: Final = "prometheus-e2e-user-key-0000001"
LIMITED: Final = "prometheus-e2e-limited-key-00001"
KEYS: Final = f"""
[keys.alice]
key = "{USER}"

[keys.limited]
key = "{LIMITED}"
requests_per_minute = 1
"""
MODEL: Final = "llama3.2:1b"
#: Loaded on the first backend only at start: it is asked first, and fails over when it is busy.
PINNED: Final = "llama3.2"
#: Long enough (100 s) to hold the one generation slot for as long as a step needs it.
HOLD: Final = "standin/paced:2000x50"
MODELS: Final = f"{MODEL},{PINNED},{HOLD},standin/fail-before"
#: $__rate_interval and $__range: longer than the whole test, so every sample it made is in range
#: however long ago its traffic ran.
WINDOW: Final = "15m"
#: Expressions whose value is a rate or a quantile of one: 0 or NaN would mean nothing moved.
MOVING: Final = ("rate(", "increase(", "histogram_quantile(")
DEADLINE_S: Final = 90.0


@dataclass
class Stack:
    minato: MinatoServer
    prometheus: PrometheusServer
    first: StandInProcess
    second: StandInProcess

    @property
    def instance(self) -> str:
        return self.minato.url.removeprefix("http://")


def _backend(standin: StandInProcess) -> str:
    return standin.url.removeprefix("http://")


@pytest.fixture(name="stack")
def fx_stack(standin_factory: Callable[..., StandInProcess], redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    first = standin_factory("--models", MODELS, "--loaded", PINNED)
    second = standin_factory("--models", MODELS)
    keys = tmp_path / "keys.toml"
    keys.write_text(KEYS)
    minato = start_minato(
        f"{first.url},{second.url}",
        tmp_path / "minato.log",
        admin_keys=ADMIN,
        keys_file=str(keys),
        redis_url=redis_url,
        ollama_probe_interval="0.5",
        max_generations="1",
        max_queue="1",
        backend_failures="100",  # the busy backend stays in the pool: each round fails over from it
    )
    credentials = tmp_path / "minato-metrics-key"
    credentials.write_text(f"{ADMIN}\n")  # as `printf '%s\n' "$KEY" >` writes it
    credentials.chmod(0o600)
    try:
        target = minato.url.removeprefix("http://")
        prometheus = PrometheusServer(tmp_path / "prometheus", scrape_config(target, credentials))
    except PrometheusMissingError as exc:
        stop_minato(minato)
        pytest.fail(str(exc), pytrace=False)
    try:
        with prometheus:
            yield Stack(minato, prometheus, first, second)
    finally:
        stop_minato(minato)


# ------------------------------------------------------------------------------- reading


def _own(minato: MinatoServer, name: str, **labels: str) -> float:
    """A sample of Minato's own /metrics, read with the admin key."""
    response = httpx.get(f"{minato.url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def _query(prometheus: PrometheusServer, expr: str) -> list[dict[str, Any]]:
    """An instant query through Prometheus' HTTP API; an error answer fails the test at once."""
    answer = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", f"{expr}: {answer}"
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _scraped_after(stack: Stack, moment: float) -> None:
    """Wait for a scrape that started after ``moment`` (Unix time) and succeeded."""
    eventually(
        lambda: _query(stack.prometheus, 'timestamp(up{job="minato"} == 1)'),
        lambda result: bool(result) and float(result[0]["value"][1]) > moment,
        "a successful scrape after the traffic",
        DEADLINE_S,
    )


# ------------------------------------------------------------------------------- traffic


def _fail_over(stack: Stack, http: httpx.Client) -> None:
    """The first backend answers Ollama's "server busy" until a request has failed over from it."""
    name = _backend(stack.first)
    before = _own(stack.minato, "minato_backend_failovers_total", backend=name)
    httpx.post(f"{stack.first.url}/_standin/busy", json={"busy": True}, timeout=10).raise_for_status()
    try:
        for _ in range(8):  # round-robin among backends that have it loaded: A comes first soon
            assert http.get(f"/{PINNED}", params={"message": "hi"}).status_code == 200
            if _own(stack.minato, "minato_backend_failovers_total", backend=name) > before:
                return
        raise AssertionError(f"no request failed over from the busy backend {name}")
    finally:
        httpx.post(f"{stack.first.url}/_standin/busy", json={"busy": False}, timeout=10).raise_for_status()


def _refuse_by_backpressure(stack: Stack, http: httpx.Client) -> None:
    """A stream holds the one slot, one generation waits in the queue of one, the next is refused
    (``queue_full``); then the stream's client leaves and the waiting one is answered."""
    with http.stream("GET", f"/stream/{HOLD}", params={"message": "hold"}) as held:
        assert held.status_code == 200
        chunks = held.iter_raw()  # kept: a dropped iterator would close the stream
        next(chunks)
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(lambda: http.get(f"/{MODEL}", params={"message": "queued"}).status_code)
            eventually(lambda: _own(stack.minato, "minato_queue_depth"), lambda n: n == 1, "queue depth", DEADLINE_S)
            refused = http.get(f"/{MODEL}", params={"message": "one too many"})
            held.close()  # the client leaves mid-stream
            assert refused.status_code == 503
            assert waiting.result(timeout=DEADLINE_S) == 200


def _traffic(stack: Stack) -> None:
    """Every kind of request the dashboard shows: answers, streams, refusals, errors, a failover."""
    url = stack.minato.url
    with httpx.Client(base_url=url, headers={"X-API-Key": USER}, timeout=60) as http:
        _fail_over(stack, http)
        for _ in range(2):
            assert http.get(f"/{MODEL}", params={"message": "hi"}).status_code == 200
            streamed = http.get(f"/stream/{MODEL}", params={"message": "hi"})
            assert streamed.status_code == 200
            assert streamed.text
        _refuse_by_backpressure(stack, http)
        assert http.get("/no-such-model:7b", params={"message": "hi"}).status_code == 404
        assert http.get("/standin/fail-before", params={"message": "hi"}).status_code >= 500
    assert httpx.get(f"{url}/{MODEL}", params={"message": "hi"}, timeout=60).status_code == 401
    limited = [
        httpx.get(f"{url}/{MODEL}", params={"message": "hi"}, headers={"X-API-Key": LIMITED}, timeout=60).status_code
        for _ in range(2)
    ]
    assert limited[-1] == 429
    assert set(limited) <= {200, 429}


# ------------------------------------------------------------------------------- the dashboard


def _grafana(expr: str, instance: str) -> str:
    """The expression as Grafana sends it with one replica picked and a window over the whole test."""
    # Grafana regex-escapes a picked value inside =~; in a PromQL string each backslash is doubled.
    values = {
        "instance": re.escape(instance).replace("\\", "\\\\"),
        "__rate_interval": WINDOW,
        "__range": WINDOW,
    }

    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        assert name in values, f"a dashboard variable the test does not know: ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def _charts(panels: list[dict[str, Any]]) -> set[str]:
    """The titles of every panel but rows, nested ones included."""
    return {p["title"] for p in panels if p["type"] != "row"} | {
        title for p in panels for title in _charts(p.get("panels", []))
    }


def _has_data(expr: str) -> Callable[[list[dict[str, Any]]], bool]:
    moving = any(function in expr for function in MOVING)

    def done(result: list[dict[str, Any]]) -> bool:
        finite = [v for v in (float(sample["value"][1]) for sample in result) if math.isfinite(v)]
        return bool(finite) and (not moving or any(v > 0 for v in finite))

    return done


@pytest.mark.timeout(400)
def test_prometheus_scrapes_minato_and_every_dashboard_query_returns_data(stack: Stack) -> None:
    keyless = httpx.get(f"{stack.minato.url}/metrics", timeout=10)
    assert keyless.status_code == 401, "Prometheus is let in by its key, not by an open /metrics"
    keyed = httpx.get(f"{stack.minato.url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert parse_media_type(keyed.headers["content-type"]) == MediaType(
        "text/plain", {"version": "1.0.0", "charset": "utf-8"}
    )

    targets = eventually(
        lambda: httpx.get(f"{stack.prometheus.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"],
        lambda found: [t["health"] for t in found] == ["up"],
        "Prometheus' target (its lastError says why it is not up)",
        DEADLINE_S,
    )
    assert targets[0]["scrapeUrl"] == f"{stack.minato.url}/metrics"
    for _ in range(2):  # the second round moves what the first one created
        _traffic(stack)
        _scraped_after(stack, time.time())
    stack.second.stop()
    down = _backend(stack.second)
    eventually(
        lambda: _query(stack.prometheus, f'minato_backend_up{{backend="{down}"}}'),
        lambda result: [s["value"][1] for s in result] == ["0"],
        "the stopped backend seen down",
        DEADLINE_S,
    )

    instances = httpx.get(
        f"{stack.prometheus.url}/api/v1/label/instance/values",
        params={"match[]": "minato_requests_total"},
        timeout=10,
    ).json()["data"]
    assert instances == [stack.instance]  # the Replica variable's query, label_values(...)
    panels = expressions()
    assert {title for title, _ in panels} == _charts(dashboard()["panels"]), "every chart has a query"
    for title, expr in panels:
        query = _grafana(expr, stack.instance)
        answer = eventually(partial(_query, stack.prometheus, query), _has_data(expr), f"{title}: {query}", DEADLINE_S)
        values = {",".join(f"{k}={v}" for k, v in sorted(s["metric"].items())): s["value"][1] for s in answer}
        print(f"{title}: {expr}\n    -> {values}")  # what each query returned, with -s

    backends = _query(
        stack.prometheus, _grafana('min by (backend) (minato_backend_up{instance=~"$instance"})', stack.instance)
    )
    assert {s["metric"]["backend"]: s["value"][1] for s in backends} == {_backend(stack.first): "1", down: "0"}
    assert "duplicate parameter" not in stack.prometheus.log()


def test_the_scrape_config_is_the_deployed_one_but_for_where_and_how_often(tmp_path: Path) -> None:
    deployed = yaml.safe_load(prometheus_server.DEPLOYED.read_text())
    [job] = deployed["scrape_configs"]
    key = tmp_path / "key"

    [local] = scrape_config("127.0.0.1:8000", key)["scrape_configs"]

    replaced = {"static_configs", "scrape_interval", "authorization"}
    assert {k: v for k, v in local.items() if k not in replaced} == {k: v for k, v in job.items() if k not in replaced}
    assert local["authorization"] == {**job["authorization"], "credentials_file": str(key)}
    assert local["static_configs"] == [{"targets": ["127.0.0.1:8000"]}]


def test_without_prometheus_the_test_fails_saying_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(prometheus_server, "DEBIAN_BINARY", tmp_path / "no-prometheus")
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(PrometheusMissingError, match=r"apt-get install prometheus; \.ci/run installs it"):
        PrometheusServer(tmp_path, {})
