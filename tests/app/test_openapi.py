"""The OpenAPI document against the server: the bounds it documents are the ones the server enforces
(from the one parameter table, ``OPTIONS``), every route's body and answer formats are the real ones,
the errors it lists are the ones Minato answers, in Minato's shapes, and it is valid OpenAPI 3.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Final, NamedTuple

import jsonschema  # type: ignore[import-untyped]
import msgspec
import pytest
import schemathesis
from litestar import Litestar
from litestar.testing import AsyncTestClient
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.definitions import OPENAPI_31

from minato.ollama.options import MAX_STOP_SEQUENCES, OPTIONS
from minato.settings import Settings
from minato.web.app import create_app
from minato.web.params import GENERATION_QUERY_PARAMETERS
from tests.support.payloads import chat_answer
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio

Client = AsyncTestClient[Litestar]
Document = dict[str, Any]
USER: Final = "user-key-for-the-openapi-tests-0001"
ADMIN_KEY: Final = "admin-key-for-the-openapi-tests-001"
#: The generation routes that take their parameters in the query string, and the method of each.
QUERY_ROUTES: Final = {
    "/{model_name}": "get",
    "/stream/{model_name}": "get",
    "/vision/{model_name}": "post",
    "/stream/vision/{model_name}": "post",
}
BODY_ROUTES: Final = ("/{model_name}", "/stream/{model_name}")
_KINDS: Final = {int: "integer", float: "number", bool: "boolean", list: "array"}


class Shape(NamedTuple):
    """What a parameter's schema says about the values it takes."""

    types: frozenset[str]
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[Any, ...] | None = None
    max_items: int | None = None


#: The generation parameters that are not Ollama options, as the server takes them in the query.
NON_OPTIONS: Final = {
    "message": Shape(frozenset({"string"})),
    "session": Shape(frozenset({"string"})),
    "system_prompt": Shape(frozenset({"string"})),
    "keep_alive": Shape(frozenset({"string"})),
    "format": Shape(frozenset({"string"}), enum=("json",)),
    "think": Shape(frozenset({"boolean"})),
}


def _option_shape(name: str) -> Shape:
    spec = OPTIONS[name]
    return Shape(
        frozenset({_KINDS[spec.kind]}),
        spec.ge,
        spec.le,
        max_items=MAX_STOP_SEQUENCES if spec.kind is list else None,
    )


def server_table(*, in_body: bool = False) -> dict[str, Shape]:
    """The shapes the server accepts, by parameter: Ollama's options from ``OPTIONS``, and the rest."""
    table = {**NON_OPTIONS, **{name: _option_shape(name) for name in OPTIONS}}
    if in_body:  # JSON carries a number of seconds as a number
        table["keep_alive"] = Shape(frozenset({"string", "number"}))
    return table


def shape_of(schema: dict[str, Any]) -> Shape:
    """The shape a schema documents, whether it spells ``null`` as a ``oneOf`` member or a type."""
    parts = [schema, *(schema.get("oneOf") or schema.get("anyOf") or [])]
    types: set[str] = set()
    for member in parts:
        kind = member.get("type")
        types.update([kind] if isinstance(kind, str) else kind or [])

    def first(key: str) -> Any:
        return next((part[key] for part in parts if part.get(key) is not None), None)

    enum = [value for part in parts for value in part.get("enum", []) if value is not None]
    return Shape(
        frozenset(types - {"null"}),
        first("minimum"),
        first("maximum"),
        tuple(enum) if enum else None,
        first("maxItems"),
    )


@pytest.fixture(name="document")
async def fx_document(client: Client) -> Document:
    response = await client.get("/docs/openapi.json")
    assert response.status_code == 200
    document: Document = response.json()
    return document


def query_parameters(document: Document, path: str) -> dict[str, dict[str, Any]]:
    operation = document["paths"][path][QUERY_ROUTES[path]]
    return {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}


def resolve(document: Document, schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def operations(document: Document) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "responses" in operation:
                yield path, method, operation


# -- the bounds -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", QUERY_ROUTES)
async def test_every_generation_query_parameter_is_documented_as_the_server_takes_it(
    document: Document, path: str
) -> None:
    assert set(NON_OPTIONS) == GENERATION_QUERY_PARAMETERS - set(OPTIONS), (
        "a new parameter needs its shape in NON_OPTIONS"
    )
    documented = query_parameters(document, path)
    expected = server_table()
    if path.startswith(("/vision/", "/stream/vision/")):
        expected["image_url"] = Shape(frozenset({"array"}))

    assert {name: shape_of(p["schema"]) for name, p in documented.items()} == expected
    assert documented["message"]["required"] is (not path.startswith(("/vision/", "/stream/vision/")))


@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_every_generation_body_field_is_documented_as_the_server_takes_it(document: Document, path: str) -> None:
    body = document["paths"][path]["post"]["requestBody"]
    schema = resolve(document, body["content"]["application/json"]["schema"])
    expected = server_table(in_body=True) | {"images": Shape(frozenset({"array"}))}

    assert {name: shape_of(field) for name, field in schema["properties"].items()} == expected
    assert schema["required"] == ["message"]


def _beyond(name: str) -> list[tuple[str, float]]:
    """One value past each bound of option ``name`` (as the query would carry it), and the bound it breaks."""
    spec = OPTIONS[name]
    step = 1 if spec.kind is int else 0.5
    values = []
    if spec.ge is not None:
        values.append((str(int(spec.ge - step) if spec.kind is int else spec.ge - step), spec.ge))
    if spec.le is not None:
        values.append((str(int(spec.le + step) if spec.kind is int else spec.le + step), spec.le))
    return values


BOUNDED: Final = [name for name, spec in OPTIONS.items() if spec.ge is not None or spec.le is not None]


@pytest.mark.parametrize("name", BOUNDED)
async def test_the_server_refuses_a_value_past_each_documented_bound(
    client: Client, ollama: ServedOllama, document: Document, name: str
) -> None:
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())
    documented = shape_of(query_parameters(document, "/{model_name}")[name]["schema"])
    assert _beyond(name), name

    for value, bound in _beyond(name):
        assert bound in {documented.minimum, documented.maximum}
        refused = await client.get("/llama3.2", params={"message": "hi", name: value})
        number = int(value) if OPTIONS[name].kind is int else float(value)
        posted = await client.post("/llama3.2", json={"message": "hi", name: number})

        assert refused.status_code == 422, (name, value, refused.text)
        assert refused.json()["detail"][0]["loc"] == ["query", name]
        assert posted.status_code == 422, (name, value, posted.text)
        assert posted.json()["detail"][0]["loc"] == ["body", name]
    for edge in (documented.minimum, documented.maximum):
        if edge is not None:
            value = str(int(edge)) if OPTIONS[name].kind is int else str(edge)
            accepted = await client.get("/llama3.2", params={"message": "hi", name: value})
            assert accepted.status_code == 200, (name, value, accepted.text)
    assert chat.called


# -- bodies and answers ------------------------------------------------------------------------------------


async def test_only_the_routes_that_read_a_body_document_one(document: Document) -> None:
    with_body = {(path, method) for path, method, op in operations(document) if "requestBody" in op}

    assert ("/health", "get") not in with_body
    assert not {(path, method) for path, method in with_body if method in {"get", "head"}}
    assert {
        ("/{model_name}", "post"),
        ("/stream/{model_name}", "post"),
        ("/vision/{model_name}", "post"),
        ("/stream/vision/{model_name}", "post"),
        ("/chat/{session_id}/system_prompt", "put"),
        ("/api/chat", "post"),
    } <= with_body
    for path in ("/install/{model_name}", "/load/{model_name}", "/unload/{model_name}"):
        assert (path, "post") not in with_body, path
    prompt = document["paths"]["/chat/{session_id}/system_prompt"]["put"]["requestBody"]
    assert resolve(document, prompt["content"]["application/json"]["schema"])["required"] == ["system_prompt"]


@pytest.mark.parametrize("path", ["/vision/{model_name}", "/stream/vision/{model_name}"])
async def test_the_vision_routes_document_their_multipart_form(document: Document, path: str) -> None:
    body = document["paths"][path]["post"]["requestBody"]
    form = body["content"]["multipart/form-data"]["schema"]["properties"]

    assert set(form) == {"images", "image_base64", "image_url", "message"}
    assert form["images"] == {**form["images"], "type": "array", "items": {"type": "string", "format": "binary"}}
    assert body["required"] is False  # links in the query string need no body


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/stream/{model_name}", "get"),
        ("/stream/{model_name}", "post"),
        ("/stream/vision/{model_name}", "post"),
    ],
)
async def test_the_stream_routes_document_each_format_and_the_accept_header(
    document: Document, path: str, method: str
) -> None:
    answer = document["paths"][path][method]["responses"]["200"]

    assert set(answer["content"]) == {"text/plain", "text/event-stream", "application/x-ndjson"}
    assert "Accept" in answer["description"]
    assert all("Accept" in c["schema"]["description"] for t, c in answer["content"].items() if t != "text/plain")


async def test_a_pull_documents_its_json_answer_and_its_ndjson_progress(document: Document) -> None:
    answer = document["paths"]["/install/{model_name}"]["post"]["responses"]["200"]

    assert set(answer["content"]) == {"application/json", "application/x-ndjson"}


async def test_the_doors_answer_200_not_201(document: Document) -> None:
    responses = document["paths"]["/api/chat"]["post"]["responses"]

    assert "200" in responses
    assert "201" not in responses


# -- errors ------------------------------------------------------------------------------------------------

MINATO_ERRORS: Final = {"ErrorDetail", "ValidationDetail"}
DOOR_ERRORS: Final = {"/api/": "OllamaErrorBody", "/v1/messages": "AnthropicErrorBody", "/v1/": "OpenAIErrorBody"}


def _door_body(path: str) -> str | None:
    return next((body for prefix, body in DOOR_ERRORS.items() if path.startswith(prefix)), None)


async def test_no_route_documents_litestars_error_shape(document: Document) -> None:
    for path, method, operation in operations(document):
        for status, response in operation["responses"].items():
            for content in (response.get("content") or {}).values():
                properties = resolve(document, content["schema"]).get("properties", {})
                assert not {"status_code", "extra"} <= set(properties), (path, method, status)


async def test_every_error_names_minatos_shape_or_its_doors(document: Document) -> None:
    for path, method, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            (content,) = response["content"].values()
            name = content["schema"]["$ref"].rsplit("/", 1)[1]
            if (path, method, status) == ("/ready", "get", "503"):
                assert name == "ReadinessReport"
            elif status == "414":  # answered below the application, in Minato's shape everywhere
                assert name == "ErrorDetail", (path, method)
            else:
                assert name in ({_door_body(path)} if _door_body(path) else MINATO_ERRORS), (path, method, status)


ERRORS_OF: Final = {
    ("/health", "get"): {"414"},
    ("/ready", "get"): {"401", "414", "429", "503"},
    ("/chat", "get"): {"401", "403", "414", "422", "429", "503"},
    ("/chat/{session_id}", "get"): {"401", "403", "404", "409", "414", "422", "429", "503"},
    ("/chat/{session_id}/system_prompt", "put"): {"401", "403", "409", "413", "414", "422", "429", "503"},
    ("/{model_name}", "get"): {"400", "401", "403", "404", "414", "422", "429", "502", "503", "504"},
    ("/{model_name}", "post"): {"400", "401", "403", "404", "413", "414", "422", "429", "502", "503", "504"},
    ("/vision/{model_name}", "post"): {"400", "401", "403", "404", "413", "414", "422", "429", "502", "503", "504"},
    ("/install/{model_name}", "post"): {"400", "401", "403", "404", "414", "422", "429", "502", "503", "504"},
    ("/models_list", "get"): {"401", "414", "429", "502", "503", "504"},
}


@pytest.mark.parametrize(("path", "method"), ERRORS_OF)
async def test_each_route_documents_the_errors_it_can_answer(document: Document, path: str, method: str) -> None:
    responses = document["paths"][path][method]["responses"]

    assert {status for status in responses if int(status) >= 400} == ERRORS_OF[path, method]


@pytest.fixture(name="keyed")
async def fx_keyed(settings: Settings, ollama: ServedOllama) -> AsyncIterator[Client]:
    """Minato with keys limited to three requests a minute, and small body and query limits."""
    keyed = msgspec.structs.replace(
        settings,
        api_keys=(USER,),
        admin_keys=(ADMIN_KEY,),
        rate_limit_per_minute=3,
        max_body_bytes=1024,
        max_query_chars=2048,
    )
    app = create_app(keyed)
    async with AsyncTestClient(app=app) as client:
        yield client


async def test_the_errors_minato_answers_are_documented_for_their_route_in_their_shape(
    keyed: Client, ollama: ServedOllama
) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    document: Document = (await keyed.get("/docs/openapi.json")).json()
    admin = {"X-API-Key": ADMIN_KEY}
    user = {"X-API-Key": USER}
    cases = [
        ("/chat", "get", await keyed.get("/chat"), "401"),
        ("/health", "get", await keyed.get("/health", params={"q": "x" * 4096}), "414"),
        ("/{model_name}", "get", await keyed.get("/llama3.2", headers=admin), "422"),
        ("/{model_name}", "get", await keyed.get("/llama3.2?message=hi&temperature=-1", headers=admin), "422"),
        ("/load/{model_name}", "post", await keyed.post("/load/llama3.2", headers=user), "403"),
        (
            "/chat/{session_id}/system_prompt",
            "put",
            await keyed.put("/chat/s/system_prompt", json={"system_prompt": "x" * 2048}, headers=admin),
            "413",
        ),
    ]
    for _ in range(3):  # the 403 above came before the key's rate was counted
        assert (await keyed.get("/chat", headers=user)).status_code == 200
    cases.append(("/chat", "get", await keyed.get("/chat", headers=user), "429"))

    for path, method, response, status in cases:
        assert str(response.status_code) == status, (path, response.text)
        documented = document["paths"][path][method]["responses"][status]
        schema = documented["content"]["application/json"]["schema"]
        jsonschema.validate(response.json(), {**schema, "components": document["components"]})


async def test_the_model_list_documents_each_models_capabilities_as_it_answers_them(
    client: Client, document: Document
) -> None:
    documented = document["paths"]["/models_list"]["get"]["responses"]["200"]["content"]["application/json"]
    listed = resolve(document, resolve(document, documented["schema"])["properties"]["models_list"]["items"])
    capabilities = listed["properties"]["capabilities"]
    answer = await client.get("/models_list/")

    assert "capabilities" in listed["required"]
    assert capabilities["type"] == "array"
    assert capabilities["items"] == {"type": "string"}
    assert "completion" in capabilities["description"], "it says what a model without it cannot do"
    assert answer.status_code == 200
    assert answer.json()["models_list"], "the mocked Ollama has models"
    jsonschema.validate(answer.json(), {**documented["schema"], "components": document["components"]})
    assert all(model["capabilities"] == ["completion", "tools"] for model in answer.json()["models_list"])


# -- validity ------------------------------------------------------------------------------------------------


async def test_the_document_is_valid_openapi_3_1(document: Document) -> None:
    assert document["openapi"].startswith("3.1.")
    problems = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft202012Validator(OPENAPI_31).iter_errors(document)
    ]
    assert problems == []


async def test_schemathesis_loads_every_operation(document: Document) -> None:
    schema = schemathesis.openapi.from_dict(document)
    loaded = list(schema.get_all_operations())

    assert loaded
    assert all(isinstance(result, Ok) for result in loaded), [r for r in loaded if not isinstance(r, Ok)][:3]
    assert len(loaded) == sum(1 for _ in operations(document))
