"""``Settings.from_env``: defaults, ``MINATO_*`` parsing, ``OLLAMA_HOST`` fallback, and the CLI's refusal."""

from __future__ import annotations

import os

import pytest
import uvicorn

from minato.errors import SettingsError
from minato.server.cli import main, serve
from minato.settings import Settings
from tests.support.environment import fx_clean_environment  # noqa: F401 - fixtures, found by name


def test_defaults_apply_when_nothing_is_set() -> None:
    settings = Settings.from_env({})

    assert settings == Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.workers == 1
    assert settings.ollama_url == "http://127.0.0.1:11434"
    assert settings.first_token_timeout == 300.0
    assert settings.max_images == 8
    assert settings.log_level == "info"
    assert settings.log_format == "auto"


def test_minato_variables_are_converted_from_text() -> None:
    settings = Settings.from_env(
        {
            "MINATO_PORT": "9000",
            "MINATO_WORKERS": " 4 ",
            "MINATO_CONNECT_TIMEOUT": "2.5",
            "MINATO_CAPABILITIES_TTL": "0",
            "MINATO_LOG_LEVEL": "debug",
            "MINATO_HOST": "0.0.0.0",
        }
    )

    assert settings.port == 9000
    assert settings.workers == 4
    assert settings.connect_timeout == 2.5
    assert settings.capabilities_ttl == 0
    assert settings.log_level == "debug"
    assert settings.host == "0.0.0.0"


@pytest.mark.parametrize("field", ["api_keys", "admin_keys", "cors_origins", "image_fetch_allow"])
def test_list_settings_are_split_once_trimmed_and_without_empty_items(field: str) -> None:
    settings = Settings.from_env({f"MINATO_{field.upper()}": " a, b ,,c, "})

    assert getattr(settings, field) == ("a", "b", "c")


@pytest.mark.parametrize("value", ["", " ", ",", " , ,"])
def test_an_empty_list_setting_is_an_empty_tuple(value: str) -> None:
    assert Settings.from_env({"MINATO_API_KEYS": value}).api_keys == ()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        pytest.param("MINATO_PORT", "abc", id="port-not-a-number"),
        pytest.param("MINATO_PORT", "70000", id="port-out-of-range"),
        pytest.param("MINATO_WORKERS", "0", id="no-workers"),
        pytest.param("MINATO_CONNECT_TIMEOUT", "0", id="zero-timeout"),
        pytest.param("MINATO_LOG_LEVEL", "loud", id="unknown-level"),
        pytest.param("MINATO_MAX_IMAGES", "-1", id="negative-limit"),
    ],
)
def test_an_invalid_value_is_an_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})

    assert str(caught.value).startswith(f"{variable}: ")


def test_a_misspelt_variable_is_an_error_suggesting_the_right_name() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"MINATO_OLAMA_URL": "http://h:1"})

    message = str(caught.value)
    assert "MINATO_OLAMA_URL is not a Minato setting" in message
    assert "did you mean MINATO_OLLAMA_URL?" in message


def test_an_unknown_variable_far_from_any_setting_is_still_an_error() -> None:
    with pytest.raises(SettingsError, match=r"^MINATO_ZZZ is not a Minato setting"):
        Settings.from_env({"MINATO_ZZZ": "1"})


def test_an_unknown_variable_is_not_given_a_suggestion_for_the_prefix_alone() -> None:
    """Every name starts with MINATO_: that alone made MINATO_FROBNICATE "look like" MINATO_PORT."""
    with pytest.raises(SettingsError, match=r"^MINATO_FROBNICATE is not a Minato setting$"):
        Settings.from_env({"MINATO_FROBNICATE": "1"})


def test_docker_composes_own_variables_are_left_alone() -> None:
    """docker-compose.yml reads them from .env, and its env_file hands them to Minato's container too."""
    settings = Settings.from_env({"MINATO_PUBLISH_ADDRESS": "0.0.0.0", "MINATO_PUBLISH_PORT": "8080"})

    assert settings == Settings()


def test_the_test_suites_own_variables_are_ignored() -> None:
    settings = Settings.from_env({"MINATO_LIVE_OLLAMA_URL": "http://gpu-box:11434", "MINATO_LIVE_MODEL": "x"})

    assert settings == Settings()


def test_variables_without_the_prefix_are_ignored() -> None:
    assert Settings.from_env({"PORT": "1", "OLLAMA_PORT": "x", "HOME": "/root"}) == Settings()


@pytest.mark.parametrize(
    ("ollama_host", "url"),
    [
        pytest.param("", "http://127.0.0.1:11434", id="empty"),
        pytest.param("   ", "http://127.0.0.1:11434", id="blank"),
        pytest.param("1.2.3.4", "http://1.2.3.4:11434", id="host-only"),
        pytest.param(":56789", "http://127.0.0.1:56789", id="port-only"),
        pytest.param("example.com:8080", "http://example.com:8080", id="host-and-port"),
        pytest.param("http://h", "http://h:80", id="http-scheme-default-port"),
        pytest.param("https://h", "https://h:443", id="https-scheme-default-port"),
        pytest.param("example.com/path/", "http://example.com:11434/path", id="path-kept-without-slash"),
        pytest.param("0.0.0.0", "http://127.0.0.1:11434", id="bind-all-becomes-loopback"),
        pytest.param("0.0.0.0:1234", "http://127.0.0.1:1234", id="bind-all-with-port"),
        pytest.param("http://0.0.0.0:1234", "http://127.0.0.1:1234", id="bind-all-url"),
        pytest.param("[::1]:11434", "http://[::1]:11434", id="ipv6-loopback"),
        pytest.param("[::]:11434", "http://[::1]:11434", id="ipv6-bind-all"),
        pytest.param("http://[fe80::1]", "http://[fe80::1]:80", id="ipv6-url"),
    ],
)
def test_ollama_host_is_read_the_way_ollamas_clients_read_it(ollama_host: str, url: str) -> None:
    assert Settings.from_env({"OLLAMA_HOST": ollama_host}).ollama_url == url


def test_minato_ollama_url_wins_over_ollama_host() -> None:
    settings = Settings.from_env({"MINATO_OLLAMA_URL": "http://gpu-box:1234", "OLLAMA_HOST": "other:5678"})

    assert settings.ollama_url == "http://gpu-box:1234"


def test_minato_ollama_url_is_normalized_too() -> None:
    assert Settings.from_env({"MINATO_OLLAMA_URL": "gpu-box"}).ollama_url == "http://gpu-box:11434"


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        pytest.param({"OLLAMA_HOST": "ftp://x"}, "OLLAMA_HOST", id="fallback"),
        pytest.param({"MINATO_OLLAMA_URL": "ftp://x"}, "MINATO_OLLAMA_URL", id="own-variable"),
        pytest.param({"MINATO_OLLAMA_URL": "ftp://x", "OLLAMA_HOST": "h"}, "MINATO_OLLAMA_URL", id="own-wins"),
    ],
)
def test_an_unsupported_scheme_is_an_error_naming_the_variable_it_came_from(
    environ: dict[str, str], variable: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(environ)

    message = str(caught.value)
    assert message.startswith(f"{variable}: ")
    assert "'ftp'" in message


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("http://h:99999", id="port-out-of-range"),
        pytest.param("http://user:secret@h:11434", id="credentials"),
        pytest.param("http://h:11434/?x=1", id="query"),
    ],
)
def test_an_unusable_ollama_url_is_an_error_naming_the_variable(value: str) -> None:
    with pytest.raises(SettingsError, match=r"^MINATO_OLLAMA_URL: "):
        Settings.from_env({"MINATO_OLLAMA_URL": value})


def test_settings_are_read_from_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINATO_PORT", "9123")

    assert Settings.from_env().port == 9123


def test_the_cli_refuses_an_invalid_setting_with_exit_code_2_and_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], served: list[tuple[object, ...]]
) -> None:
    monkeypatch.setenv("MINATO_PORT", "not-a-port")

    code = main(["serve"])

    assert code == 2
    assert "MINATO_PORT" in capsys.readouterr().err
    assert served == []


def test_the_cli_refuses_a_misspelt_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MINATO_OLAMA_URL", "http://h:1")
    monkeypatch.setattr("minato.server.cli.serve", lambda *args: pytest.fail("must not serve"))

    assert main(["serve"]) == 2
    assert "MINATO_OLLAMA_URL" in capsys.readouterr().err


def test_the_cli_flags_override_the_environment(
    monkeypatch: pytest.MonkeyPatch, served: list[tuple[object, ...]]
) -> None:
    monkeypatch.setenv("MINATO_PORT", "9000")
    monkeypatch.setenv("MINATO_API_KEYS", "a-key")  # 0.0.0.0 without keys is refused (see test_security)

    assert main(["serve", "--port", "9100", "--host", "0.0.0.0"]) == 0
    host, port, workers, settings, _ = served[0]
    assert (host, port, workers) == ("0.0.0.0", 9100, 1)
    assert isinstance(settings, Settings)
    assert settings.port == 9000


@pytest.mark.parametrize(
    ("arguments", "variables"),
    [
        pytest.param(["serve", "--workers", "2"], {}, id="flag"),
        pytest.param(["serve"], {"MINATO_WORKERS": "3"}, id="variable"),
    ],
)
def test_the_cli_refuses_several_workers_with_conversations_in_memory(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    served: list[tuple[object, ...]],
    arguments: list[str],
    variables: dict[str, str],
) -> None:
    monkeypatch.setenv("MINATO_SESSION_STORE", "memory://")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    assert main(arguments) == 2
    said = capsys.readouterr().err
    assert "each worker would keep its own conversations" in said
    assert "MINATO_SESSION_STORE=minato.db" in said
    assert "MINATO_REDIS_URL" in said
    assert served == []


@pytest.mark.parametrize(
    "variables",
    [
        pytest.param({}, id="sqlite-default"),
        pytest.param({"MINATO_SESSION_STORE": "memory://", "MINATO_REDIS_URL": "redis://127.0.0.1:6379/0"}, id="redis"),
    ],
)
def test_the_cli_serves_several_workers_that_share_their_state(
    monkeypatch: pytest.MonkeyPatch, served: list[tuple[object, ...]], variables: dict[str, str]
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    assert main(["serve", "--workers", "2"]) == 0
    assert served[0][2] == 2


def test_serving_tells_every_worker_how_many_share_the_state(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[uvicorn.Config] = []
    monkeypatch.setenv("MINATO_WORKERS", "1")  # restored after the test
    monkeypatch.setattr("minato.server.serving.run", ran.append)
    monkeypatch.setattr("minato.server.httpserver.raise_open_file_limit", lambda: None)

    assert serve("127.0.0.1", 0, 3, Settings()) == 0

    assert ran[0].workers == 3
    assert os.environ["MINATO_WORKERS"] == "3"
    assert Settings.from_env().workers == 3


def test_an_empty_default_keep_alive_is_unset_as_env_example_shows_it() -> None:
    assert Settings.from_env({"MINATO_DEFAULT_KEEP_ALIVE": ""}).default_keep_alive is None
