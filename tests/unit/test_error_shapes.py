"""Every door's error body on the wire is the Struct its OpenAPI document describes: one definition each."""

from __future__ import annotations

import msgspec
import pytest

from minato.web.rendering import (
    AnthropicErrorBody,
    Door,
    ErrorDetail,
    OllamaErrorBody,
    OpenAIErrorBody,
    OpenAIStreamError,
    StreamDialect,
    door_error_body,
    door_error_spec,
    error_body,
    stream_error_frame,
)


@pytest.mark.parametrize(
    ("door", "shape", "wire"),
    [
        (Door.MINATO, ErrorDetail, b'{"detail":"gone"}'),
        (Door.OLLAMA, OllamaErrorBody, b'{"error":"gone"}'),
        (
            Door.OPENAI,
            OpenAIErrorBody,
            b'{"error":{"message":"gone","type":"not_found_error","param":null,"code":null}}',
        ),
        (Door.ANTHROPIC, AnthropicErrorBody, b'{"type":"error","error":{"type":"not_found_error","message":"gone"}}'),
    ],
)
def test_a_doors_error_body_is_its_documented_shape(door: Door, shape: type[msgspec.Struct], wire: bytes) -> None:
    body = door_error_body(door, 404, "gone")
    assert body == wire
    assert door_error_spec(door, "gone").data_container is shape
    msgspec.json.decode(body, type=shape, strict=True)  # every field the document names, nothing else


def test_the_bodies_below_the_app_are_minatos_shape() -> None:
    assert msgspec.json.decode(error_body("late"), type=ErrorDetail) == ErrorDetail("late")


@pytest.mark.parametrize(
    ("dialect", "frame"),
    [
        (StreamDialect.NDJSON, b'{"error":"cut"}\n'),
        (StreamDialect.OPENAI, b'data: {"error":{"message":"cut","type":"api_error","param":null,"code":null}}\n\n'),
        (
            StreamDialect.RESPONSES,
            b'event: error\ndata: {"type":"error",'
            b'"error":{"message":"cut","type":"api_error","param":null,"code":null}}\n\n',
        ),
        (
            StreamDialect.ANTHROPIC,
            b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"cut"}}\n\n',
        ),
    ],
)
def test_a_broken_streams_last_frame_keeps_its_dialects_shape(dialect: StreamDialect, frame: bytes) -> None:
    assert stream_error_frame(dialect, "cut") == frame


def test_the_responses_error_event_is_openais_error_typed_as_an_event() -> None:
    data = stream_error_frame(StreamDialect.RESPONSES, "cut").split(b"data: ", 1)[1]
    assert msgspec.json.decode(data, type=OpenAIStreamError).error.message == "cut"
