"""The policy's pure parts: options compared as numbers, a metrics key that is also a user key, the JSON
depth measure."""

from __future__ import annotations

import json

import pytest

from minato.auth.keyring import Keyring
from minato.core.policy import OptionRefusedError, whole_number
from minato.errors import SettingsError
from minato.settings import Settings
from minato.web.limits import json_too_deep

pytestmark = pytest.mark.anyio

# -- options compared as numbers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(4096, 4096), (4096.0, 4096), (1e8, 100_000_000), (None, None), (-1, -1)],
)
def test_an_integer_option_is_read_as_the_number_ollama_will_use(value: object, expected: int | None) -> None:
    assert whole_number("num_ctx", value) == expected


@pytest.mark.parametrize("value", [4096.5, float("inf"), "4096", True, [4096], {"n": 1}])
def test_an_integer_option_that_is_not_a_whole_number_is_refused(value: object) -> None:
    with pytest.raises(OptionRefusedError, match="num_ctx"):
        whole_number("num_ctx", value)


# -- what a key may see and read -----------------------------------------------------------------


def test_a_metrics_key_that_is_also_a_user_key_is_refused_at_start() -> None:
    with pytest.raises(SettingsError, match="MINATO_METRICS_KEYS"):
        Keyring.from_settings(Settings(api_keys=("same-key",), metrics_keys=("same-key",)))


# -- deeply nested bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        (b"[" * 129 + b"]" * 129, True),
        (b"[" * 128 + b"]" * 128, False),
        (json.dumps({"a": "[" * 500}).encode(), False),
        (json.dumps({"a": 'x"[[[', "b": [[[[1]]]] * 200}).encode(), False),
        (json.dumps({"a": "x\\", "b": "[[" * 100}).encode(), False),
        (b'{"a":"\\\\\\"[[","b":' + b'{"k":' * 129 + b"1" + b"}" * 129 + b"}", True),
        (b"[" + b"[],[" * 130 + b"]" * 131, True),
    ],
    ids=["129", "128", "brackets-in-a-string", "escaped-quote", "escaped-backslash", "after-escapes", "climbing"],
)
def test_the_depth_is_measured_outside_strings(text: bytes, deep: bool) -> None:
    assert json_too_deep(text) is deep
