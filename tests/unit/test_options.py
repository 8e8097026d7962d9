"""Generation parameters parsed without the app: ``keep_alive`` and model names."""

from __future__ import annotations

import pytest

from minato.errors import InvalidInputError
from minato.ollama.options import INT64_MAX, MAX_KEEP_ALIVE_SECONDS, parse_keep_alive
from minato.web.params import MAX_MODEL_NAME, validate_model_name

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("given", "parsed"),
    [
        pytest.param("300", 300, id="integer-seconds"),
        pytest.param(" 300 ", 300, id="surrounding-space"),
        pytest.param("2.5", 2.5, id="fractional-seconds"),
        pytest.param("0", 0, id="zero-unloads"),
        pytest.param("300.0", 300, id="integral-float-becomes-int"),
        pytest.param("-1", -1, id="minus-one-forever"),
        pytest.param("-3.5", -1, id="any-negative-forever"),
        pytest.param("-86400", -1, id="large-negative-forever"),
        pytest.param("5m", "5m", id="minutes"),
        pytest.param("1h30m", "1h30m", id="compound"),
        pytest.param("500ms", "500ms", id="milliseconds"),
        pytest.param("1.5h", "1.5h", id="fractional-duration"),
        pytest.param("10us", "10us", id="microseconds"),
        pytest.param("-1m", "-1m", id="negative-duration"),
        pytest.param("0s", "0s", id="zero-duration"),
    ],
)
def test_keep_alive_becomes_a_number_or_a_go_duration(given: str, parsed: object) -> None:
    result = parse_keep_alive(given)

    assert result == parsed
    assert type(result) is type(parsed)


@pytest.mark.parametrize(
    "given",
    ["300x", "abc", "", "5M", "1h 30m", "m", "nan", "inf", "-inf", "1e20", "0x10", "5m!"],
)
def test_keep_alive_rejects_what_ollama_would_refuse(given: str) -> None:
    with pytest.raises(ValueError, match=r"seconds|duration"):
        parse_keep_alive(given)


@pytest.mark.parametrize(
    "name",
    [
        "llama3.2",
        "llama3.2:1b",
        "qwen3:0.6b-q4_K_M",
        "library/qwen3:0.6b",
        "jmorgan/llama-3_2:latest",
        "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
        "registry.ollama.ai/library/llama3.2:latest",
        "a" * MAX_MODEL_NAME,
    ],
)
def test_valid_model_names_are_accepted_verbatim(name: str) -> None:
    assert validate_model_name(name) == name


def test_the_leading_slash_of_a_path_parameter_is_dropped() -> None:
    assert validate_model_name("/llama3.2:1b") == "llama3.2:1b"


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        pytest.param("", "missing", id="empty"),
        pytest.param("/", "missing", id="only-slash"),
        pytest.param("llama 3", "value_error", id="space"),
        pytest.param("..", "value_error", id="dot-dot"),
        pytest.param("../etc/passwd", "value_error", id="parent-traversal"),
        pytest.param("a/../b", "value_error", id="inner-traversal"),
        pytest.param("a//b", "value_error", id="empty-segment"),
        pytest.param("-rf", "value_error", id="leading-dash"),
        pytest.param(".hidden", "value_error", id="leading-dot"),
        pytest.param("llama3:", "value_error", id="empty-tag"),
        pytest.param(":latest", "value_error", id="tag-only"),
        pytest.param("a:b:c", "value_error", id="two-tags"),
        pytest.param("llama3?x=1", "value_error", id="query-character"),
        pytest.param("llama3\n", "value_error", id="newline"),
        pytest.param("a" * (MAX_MODEL_NAME + 1), "value_error", id="too-long"),
    ],
)
def test_invalid_model_names_are_a_422_on_the_path_parameter(raw: str, kind: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_model_name(raw)

    (item,) = caught.value.items
    assert item.loc == ["path", "model_name"]
    assert item.type == kind


def test_a_registry_host_with_a_port_is_a_valid_model_name() -> None:
    # Ollama's model.ParseName accepts "host:port/namespace/model:tag" (private registries).
    assert validate_model_name("registry.local:5000/team/model:tag") == "registry.local:5000/team/model:tag"


@pytest.mark.parametrize(
    ("given", "fits"),
    [
        pytest.param("2562047h47m16.854775807s", True, id="int64-max-exactly"),
        pytest.param("2562047h47m16.854775808s", False, id="one-nanosecond-over"),
        pytest.param("-2562047h47m16.854775808s", True, id="int64-min-as-negative"),
        pytest.param("9223372036854775807ns", True, id="max-in-nanoseconds"),
        pytest.param("9223372036854775808ns", False, id="over-in-nanoseconds"),
        pytest.param("99999999999999999h", False, id="the-reported-overflow"),
        pytest.param("-99999999999999999h", False, id="negative-overflow-too"),
        pytest.param("2562047h", True, id="just-under-in-hours"),
        pytest.param("2562048h", False, id="just-over-in-hours"),
        pytest.param("2562047h60m", False, id="over-only-once-summed"),
        pytest.param("1.000000000000000000000000001h", True, id="long-fraction-loses-precision-like-go"),
    ],
)
def test_keep_alive_durations_are_checked_against_gos_int64_nanoseconds(given: str, fits: bool) -> None:
    if fits:
        assert parse_keep_alive(given) == given
    else:
        with pytest.raises(ValueError, match="longer than the longest duration Ollama accepts"):
            parse_keep_alive(given)


def test_the_numeric_keep_alive_bound_stays_inside_gos_int64_nanoseconds() -> None:
    assert MAX_KEEP_ALIVE_SECONDS * 1e9 < INT64_MAX
    assert parse_keep_alive(str(int(MAX_KEEP_ALIVE_SECONDS))) == int(MAX_KEEP_ALIVE_SECONDS)
    with pytest.raises(ValueError, match="finite number of seconds"):
        parse_keep_alive(str(int(MAX_KEEP_ALIVE_SECONDS) + 1))


def test_only_ascii_digits_make_a_go_duration() -> None:
    with pytest.raises(ValueError, match="duration such as 5m"):
        parse_keep_alive("\u0663h")  # ARABIC-INDIC DIGIT THREE: a digit to Python, not to Go
