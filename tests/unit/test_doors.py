"""The doors' start-up settings: a bad ``MINATO_OLLAMA_HEADERS`` stops Minato and says why."""

from __future__ import annotations

import pytest

from minato.errors import SettingsError
from minato.settings import Settings

pytestmark = pytest.mark.anyio


# -- the operator's headers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "named"),
    [("not json", "not a JSON object"), ('{"Host": "x"}', "'Host'"), ('{"X-A": "a\\nb"}', "one line")],
)
def test_bad_ollama_headers_stop_start_up(value: str, named: str) -> None:
    with pytest.raises(SettingsError, match="MINATO_OLLAMA_HEADERS") as error:
        Settings.from_env({"MINATO_OLLAMA_HEADERS": value})

    assert named in str(error.value)
