"""The strict media-type reader the ``/metrics`` tests use (Go's ``mime.ParseMediaType`` rules)."""

from __future__ import annotations

from typing import Final

import pytest

from tests.support.media_type import MediaType, MediaTypeError, parse_media_type

pytestmark = pytest.mark.anyio

#: What /metrics sent before: Litestar appended a charset to prometheus_client's, which has one.
DOUBLED: Final = "text/plain; version=1.0.0; charset=utf-8; charset=utf-8"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text/plain; version=1.0.0; charset=utf-8", MediaType("text/plain", {"version": "1.0.0", "charset": "utf-8"})),
        ("text/plain; version=0.0.4", MediaType("text/plain", {"version": "0.0.4"})),
        ("Text/Plain;Charset=UTF-8", MediaType("text/plain", {"charset": "UTF-8"})),
        ('application/json; a="b \\"c\\" d"', MediaType("application/json", {"a": 'b "c" d'})),
        ('text/plain; a=""', MediaType("text/plain", {"a": ""})),
        (
            "application/openmetrics-text; version=1.0.0;",
            MediaType("application/openmetrics-text", {"version": "1.0.0"}),
        ),
        ("text/plain ;", MediaType("text/plain", {})),
    ],
)
def test_the_strict_reader_takes_well_formed_media_types(value: str, expected: MediaType) -> None:
    assert parse_media_type(value) == expected


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (DOUBLED, "duplicate parameter name 'charset'"),
        ("text/plain; charset=utf-8; CharSet=utf-8", "duplicate parameter name 'charset'"),
        ("text/plain; version=1.0.0; version=0.0.4", "duplicate parameter name 'version'"),
        ("text/plain; charset", "not an RFC 9110 media type"),  # no value
        ("text/plain; charset=", "not an RFC 9110 media type"),  # an empty value
        ("text/plain; =utf-8", "not an RFC 9110 media type"),  # no name
        ("text/plain; charset=utf 8", "not an RFC 9110 media type"),  # a space in a token
        ('text/plain; charset="utf-8', "not an RFC 9110 media type"),  # an unterminated quote
        ("text/pl@in", "not an RFC 9110 media type"),  # not a token
        ("text /plain", "not an RFC 9110 media type"),
        ("text", "not an RFC 9110 media type"),  # no subtype
        ("", "not an RFC 9110 media type"),
        ("text/plain;; charset=utf-8", "an empty parameter before the end"),
        ("text/plain; ;", "an empty parameter before the end"),
    ],
)
def test_the_strict_reader_refuses_what_go_or_rfc_9110_refuses(value: str, why: str) -> None:
    with pytest.raises(MediaTypeError, match=why):
        parse_media_type(value)
