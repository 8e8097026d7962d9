"""Schemathesis against Minato's own OpenAPI schema: no 5xx, no hang, every error a JSON ``detail``
(or, on the front doors, in the door's own shape: the doors relay Ollama's answers, 5xx included,
so there only Minato's own failure counts).

Minato runs as a real process in front of the Ollama stand-in. Every operation in
``/docs/openapi.json`` gets a bounded number of generated requests, first with data that fits the
schema, then with data that does not. Generation is derandomised so a run is reproducible; a failure
names the operation and gives a curl command for the case.

Two things are steered away from on purpose:

* ``image_url`` links (in the query string and in the vision form) are rewritten to loopback
  addresses (which Minato must refuse), so a generated host name never makes Minato resolve or fetch
  anything off this machine;
* model names under ``standin/`` are the stand-in's scripted failures (hang, busy, fail-before), whose
  5xx answers are correct and tested elsewhere, so they are renamed.

Findings are pinned by their own tests below, so each stays fixed even if the generator stops
producing the case that found it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, Final, TypeAlias

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.core.result import Ok

from minato.web.rendering import Door, door_of
from tests.support.servers import Backend, MinatoServer

pytestmark = pytest.mark.e2e

MAX_EXAMPLES: Final = 25
REQUEST_TIMEOUT_S: Final = 10.0
MAX_FAILURES_SHOWN: Final = 3
#: SQLite's INTEGER is a signed 64-bit number.
SQLITE_MAX_INT: Final = 2**63 - 1
#: Statuses whose body is not checked as a JSON ``detail``: ``/metrics`` is Prometheus text.
TEXT_BODY_PATHS: Final = frozenset({"/metrics"})

#: An operation of any schema kind (schemathesis leaves its type parameters open).
Operation: TypeAlias = APIOperation[Any, Any, Any, Any]
GeneratedCase: TypeAlias = Case[Operation]


@pytest.fixture(scope="module")
def schema(minato: MinatoServer, backend: Backend) -> schemathesis.BaseSchema:
    if backend.kind != "standin":
        pytest.skip("fuzzing sends thousands of requests; only against the stand-in")
    return schemathesis.openapi.from_url(f"{minato.url}/docs/openapi.json", config=schemathesis.Config())


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False  # loopback only: never a proxy from the environment
        yield s


def _steer(case: GeneratedCase) -> None:
    """Keep a generated case on this machine and off the stand-in's scripted failures."""
    # Checked, not trusted: what the generator puts here is not promised to match the declared type.
    query: object = case.query
    body: object = case.body
    for fields in (query, body):  # links in the query string, and in the vision routes' form
        if isinstance(fields, dict) and "image_url" in fields:
            links = fields["image_url"]
            count = len(links) if isinstance(links, list) else 1
            fields["image_url"] = [f"http://127.0.0.1:9/fuzz-{i}.png" for i in range(max(count, 1))]
    params = case.path_parameters
    if isinstance(params, dict):
        for name, value in params.items():
            if isinstance(value, str) and value.lower().lstrip("/").startswith("standin/"):
                params[name] = "fuzz/" + value.lstrip("/")


def _content_type(response: schemathesis.Response) -> str:
    return ", ".join(
        value for name, values in response.headers.items() if name.lower() == "content-type" for value in values
    )


def _door_shape_problem(door: Door, status: int, body: Any) -> str | None:
    """What is wrong with an error body at a front door (each door has its own shape), or ``None``."""
    error = body.get("error") if isinstance(body, dict) else None
    if door is Door.OLLAMA:
        fits = isinstance(error, str)
    elif door is Door.OPENAI:
        fits = isinstance(error, dict) and isinstance(error.get("message"), str) and "type" in error
    else:
        fits = isinstance(body, dict) and body.get("type") == "error" and isinstance(error, dict) and "type" in error
    return None if fits else f"answered {status} outside the {door.value} door's error shape: {body!r:.300}"


def _error_body_problem(response: schemathesis.Response, door: Door) -> str | None:
    """What is wrong with a non-2xx response's body (it must be JSON with ``detail``), or ``None``."""
    status = response.status_code
    content_type = _content_type(response)
    if not content_type.startswith("application/json"):
        return f"answered {status} with {content_type!r}, not JSON: {response.text[:300]!r}"
    try:
        body: Any = response.json()
    except ValueError:
        return f"answered {status} with a body that is not JSON: {response.text[:300]!r}"
    if door is not Door.MINATO:
        return _door_shape_problem(door, status, body)
    if not isinstance(body, dict) or "detail" not in body:
        return f"answered {status} without a `detail` key: {body!r:.300}"
    return None


def _problem(case: GeneratedCase, response: schemathesis.Response, elapsed: float) -> str | None:
    """What is wrong with ``response``, or ``None``."""
    if elapsed > REQUEST_TIMEOUT_S:
        return f"took {elapsed:.1f} s"
    door = door_of(case.operation.path)
    # Ollama's own 5xx is a door's contract; Minato's unexpected failure never is.
    if response.status_code >= 500 and (door is Door.MINATO or "Internal Server Error" in response.text):
        return f"answered {response.status_code}: {response.text[:300]!r}"
    if response.status_code < 300 or case.operation.path in TEXT_BODY_PATHS or case.method.upper() == "HEAD":
        return None
    return _error_body_problem(response, door)


def _fuzz_operation(
    operation: Operation, mode: GenerationMode, base_url: str, session: requests.Session
) -> tuple[int, list[str]]:
    """Send up to ``MAX_EXAMPLES`` cases for one operation; return how many were sent and what failed."""
    failures: list[str] = []
    sent = 0

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: failures are collected, not raised
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: GeneratedCase) -> None:
        nonlocal sent
        _steer(case)
        started = time.monotonic()
        try:
            response = case.call(base_url=base_url, session=session, timeout=REQUEST_TIMEOUT_S)
        except requests.Timeout:
            problem: str | None = f"no answer within {REQUEST_TIMEOUT_S:.0f} s"
        except requests.ConnectionError as exc:
            problem = f"connection failed: {exc}"
        else:
            problem = _problem(case, response, time.monotonic() - started)
        sent += 1
        if problem is not None and len(failures) < MAX_FAILURES_SHOWN:
            failures.append(
                f"{operation.label} [{mode.value}] {problem}\n    {case.as_curl_command(base_url=base_url)}"
            )

    # Nothing invalid to generate (an operation without parameters) is not a failure.
    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        run()
    return sent, failures


def _operations(schema: schemathesis.BaseSchema) -> list[Operation]:
    """Every operation in ``schema``; one the loader could not read fails the test, naming why."""
    operations: list[Operation] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"an operation in the schema is invalid: {result.err()}"
        operations.append(result.ok())
    return operations


@pytest.mark.timeout(110)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_every_operation_survives_generated_requests(
    schema: schemathesis.BaseSchema, minato: MinatoServer, session: requests.Session, mode: GenerationMode
) -> None:
    operations = _operations(schema)
    assert len(operations) >= 15, "the schema lists every route"

    failures: list[str] = []
    total = 0
    for operation in operations:
        sent, found = _fuzz_operation(operation, mode, minato.url, session)
        total += sent
        failures.extend(found)

    assert not failures, f"{len(failures)} failing case(s) out of {total}:\n" + "\n".join(failures)
    assert total >= len(operations), "every operation got at least one request"
    assert session.get(f"{minato.url}/health", timeout=REQUEST_TIMEOUT_S).status_code == 200


def test_a_huge_chat_offset_is_a_422_not_a_server_error(minato: MinatoServer, backend: Backend) -> None:
    if backend.kind != "standin":
        pytest.skip("the fuzz findings are pinned against the stand-in")
    with requests.Session() as s:
        s.trust_env = False
        response = s.get(f"{minato.url}/chat", params={"offset": str(SQLITE_MAX_INT + 1)}, timeout=REQUEST_TIMEOUT_S)

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", "offset"]
