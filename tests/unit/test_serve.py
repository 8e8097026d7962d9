"""``minato serve`` in-process: the env file it reads, its start-up line, and the second Ctrl-C.

Unit tests run in a scratch directory of their own (``tests/conftest.py``), so ``./.env`` here is the
file a test writes.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from minato.auth.keyring import Keyring
from minato.errors import SettingsError
from minato.server.cli import main
from minato.server.envfile import load_env_file
from minato.server.serving import SecondInterrupt, describe_auth, describe_state, startup_fields
from minato.settings import Settings
from tests.support.environment import fx_clean_environment  # noqa: F401 - fixtures, found by name

KEY = "a-key-from-the-file"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_the_environment() -> Iterator[None]:
    """``minato serve`` writes the file's settings into the process environment: take them out again."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(name="environ")
def fx_environ(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A copy of the (clean) environment to load files into; the process's own stays untouched."""
    return dict(os.environ)


def write(text: str, name: str = ".env") -> Path:
    path = Path(name)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- reading the file


def test_without_a_dotenv_nothing_is_read(environ: dict[str, str]) -> None:
    before = dict(environ)

    assert load_env_file(None, environ) is None
    assert environ == before


def test_the_dotenv_sets_what_the_environment_does_not(environ: dict[str, str]) -> None:
    write(f"MINATO_API_KEYS={KEY}\nMINATO_PORT=9001\n")
    environ["MINATO_PORT"] = "9002"

    loaded = load_env_file(None, environ)

    assert loaded is not None
    assert (environ["MINATO_API_KEYS"], environ["MINATO_PORT"]) == (KEY, "9002")
    assert (loaded.applied, loaded.overridden) == (("MINATO_API_KEYS",), ("MINATO_PORT",))
    assert loaded.path == Path(".env").resolve()
    assert Settings.from_env(environ).port == 9002


def test_quoting_comments_export_and_references_are_read_as_docker_compose_reads_them(environ: dict[str, str]) -> None:
    write(
        "# a comment\n"
        "export MINATO_API_KEYS='single # not a comment'\n"
        'MINATO_ADMIN_KEYS="double" # a comment\n'
        "MINATO_HOST=0.0.0.0   # a comment\n"
        "MINATO_CORS_ORIGINS=http://${MINATO_HOST}:3000\n"
        'MINATO_OLLAMA_HEADERS={"Authorization": "Bearer t"}\n'
    )

    load_env_file(None, environ)

    assert environ["MINATO_API_KEYS"] == "single # not a comment"
    assert environ["MINATO_ADMIN_KEYS"] == "double"
    assert environ["MINATO_HOST"] == "0.0.0.0"
    assert environ["MINATO_CORS_ORIGINS"] == "http://0.0.0.0:3000"
    assert Settings.from_env(environ).ollama_headers == {"Authorization": "Bearer t"}


def test_ollama_host_is_taken_and_other_programs_variables_are_left_alone(environ: dict[str, str]) -> None:
    write(
        "OLLAMA_HOST=gpu-box:11434\n"
        "MINATO_PUBLISH_ADDRESS=0.0.0.0\nMINATO_PUBLISH_PORT=8080\n"
        "OLLAMA_KEEP_ALIVE=5m\nLB_PUBLISH_PORT=8080\nPYTHONPATH=/elsewhere\nMINATO_LIVE_MODEL=x\n"
    )

    loaded = load_env_file(None, environ)

    assert loaded is not None
    assert loaded.applied == ("OLLAMA_HOST",)
    assert set(loaded.ignored) == {
        "MINATO_PUBLISH_ADDRESS",
        "MINATO_PUBLISH_PORT",
        "OLLAMA_KEEP_ALIVE",
        "LB_PUBLISH_PORT",
        "PYTHONPATH",
        "MINATO_LIVE_MODEL",
    }
    assert not {"PYTHONPATH", "OLLAMA_KEEP_ALIVE", "MINATO_PUBLISH_ADDRESS"} & set(environ)
    assert Settings.from_env(environ).ollama_url == "http://gpu-box:11434"


def test_a_bare_name_sets_nothing(environ: dict[str, str]) -> None:
    write("MINATO_API_KEYS\n")

    loaded = load_env_file(None, environ)

    assert loaded is not None
    assert "MINATO_API_KEYS" not in environ
    assert loaded.applied == loaded.overridden == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            f"# keys\n\n\nMINATO_API_KEY={KEY}\n",
            r"\.env line 4: MINATO_API_KEY is not a Minato setting \(did you mean MINATO_API_KEYS\?\)$",
            id="misspelt",
        ),
        pytest.param(
            "MINATO_PORT=1\nMINATO_FROBNICATE=1\n",
            r"\.env line 2: MINATO_FROBNICATE is not a Minato setting$",
            id="unknown",
        ),
        pytest.param("MINATO_PORT=1\n'oops\n", r"\.env line 2: not a NAME=value line$", id="malformed"),
    ],
)
def test_a_file_minato_cannot_take_is_refused_naming_the_line_and_sets_nothing(
    environ: dict[str, str], text: str, message: str
) -> None:
    write(text)
    before = dict(environ)

    with pytest.raises(SettingsError, match=message) as refused:
        load_env_file(None, environ)

    assert str(Path(".env").resolve()) in str(refused.value)
    assert KEY not in str(refused.value)
    assert environ == before


def test_an_explicit_file_is_read_instead_of_the_dotenv(environ: dict[str, str], tmp_path: Path) -> None:
    write("MINATO_PORT=1111\n")
    other = tmp_path / "conf" / "minato.env"
    other.parent.mkdir()
    other.write_text("MINATO_PORT=2222\n")

    loaded = load_env_file(other, environ)

    assert loaded is not None
    assert (loaded.path, environ["MINATO_PORT"]) == (other, "2222")


def test_an_explicit_file_that_does_not_exist_is_refused(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=r"^cannot read the env file nowhere\.env: No such file or directory$"):
        load_env_file(Path("nowhere.env"), environ)


# --------------------------------------------------------------------------- the CLI


def test_the_cli_serves_with_the_dotenv_in_force(served: list[tuple[object, ...]]) -> None:
    write(f"MINATO_API_KEYS={KEY}\nMINATO_PORT=9123\n")

    assert main(["serve"]) == 0

    _, port, _, settings, env_file = served[0]
    assert port == 9123
    assert isinstance(settings, Settings)
    assert settings.api_keys == (KEY,)
    assert getattr(env_file, "applied", None) == ("MINATO_API_KEYS", "MINATO_PORT")


@pytest.mark.usefixtures("served")
@pytest.mark.parametrize(
    ("arguments", "text", "said"),
    [
        pytest.param(["serve"], "MINATO_API_KEY=k\n", "line 1: MINATO_API_KEY is not a Minato setting", id="misspelt"),
        pytest.param(["serve"], "MINATO_PORT=http\n", "(from ", id="invalid-value"),
        pytest.param(["serve", "--env-file", "missing.env"], "", "cannot read the env file missing.env", id="missing"),
    ],
)
def test_the_cli_refuses_an_env_file_it_cannot_take_with_exit_code_2(
    capsys: pytest.CaptureFixture[str], arguments: list[str], text: str, said: str
) -> None:
    write(text)

    assert main(arguments) == 2
    assert said in capsys.readouterr().err


def test_an_invalid_value_is_traced_to_its_line_in_the_dotenv(capsys: pytest.CaptureFixture[str]) -> None:
    write("MINATO_HOST=127.0.0.1\nMINATO_PORT=http\n")

    assert main(["serve"]) == 2
    said = capsys.readouterr().err
    assert said.startswith("minato: invalid setting: MINATO_PORT: ")
    assert said.rstrip().endswith(f"(from {Path('.env').resolve()} line 2)")


def test_an_invalid_value_from_the_environment_is_not_blamed_on_the_dotenv(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write("MINATO_PORT=http\n")
    monkeypatch.setenv("MINATO_PORT", "also-http")

    assert main(["serve"]) == 2
    assert "(from " not in capsys.readouterr().err


# --------------------------------------------------------------------------- the start-up line


def test_the_start_up_line_names_no_key_and_no_password() -> None:
    settings = Settings(
        api_keys=(KEY, "another"),
        admin_keys=("the-admin",),
        redis_url="rediss://minato:hunter2@redis.internal:6380/3",
        ollama_url="http://a:11434,http://b:11434",
    )

    fields = startup_fields(settings, Keyring.from_settings(settings), "::", 8000, 4, None)

    assert fields["listen"] == "http://[::]:8000"
    assert fields["ollama"] == ["http://a:11434", "http://b:11434"]
    assert fields["auth"] == "3 keys"
    assert fields["state"] == "redis redis.internal:6380/3 (TLS)"
    assert fields["workers"] == 4
    assert not any(secret in repr(fields) for secret in (KEY, "the-admin", "hunter2", "minato:"))


@pytest.mark.parametrize(
    ("settings", "auth"),
    [
        pytest.param(Settings(), "keyless", id="keyless"),
        pytest.param(Settings(api_keys=("one",)), "1 key", id="one-key"),
    ],
)
def test_the_auth_mode(settings: Settings, auth: str) -> None:
    assert describe_auth(settings, Keyring.from_settings(settings)) == auth


def test_the_auth_mode_names_the_keys_file() -> None:
    Path("keys.toml").write_text('[keys.a]\nkey = "aaaa"\n[keys.b]\nkey = "bbbb"\n')
    Path("users.txt").write_text("cccc\n")
    settings = Settings(keys_file="keys.toml", api_keys_file="users.txt")

    assert describe_auth(settings, Keyring.from_settings(settings)) == "keys file keys.toml and users.txt (3 keys)"


@pytest.mark.parametrize(
    ("settings", "state"),
    [
        pytest.param(Settings(session_store="memory://"), "memory", id="memory"),
        pytest.param(Settings(session_store="/srv/minato.db"), "sqlite /srv/minato.db", id="sqlite"),
        pytest.param(Settings(session_store="sqlite:///srv/m.db"), "sqlite /srv/m.db", id="sqlite-url"),
        pytest.param(Settings(redis_url="redis://localhost"), "redis localhost:6379/0", id="redis"),
        pytest.param(Settings(redis_url="redis://:pw@[::1]:7000/2"), "redis [::1]:7000/2", id="redis-ipv6"),
        pytest.param(Settings(redis_url="unix:///run/redis.sock?db=1"), "redis unix:/run/redis.sock", id="socket"),
    ],
)
def test_the_state_home(settings: Settings, state: str) -> None:
    assert describe_state(settings) == state


# --------------------------------------------------------------------------- the second Ctrl-C


class _App:
    """Litestar's part: it starts, then serves requests that run until they are cancelled."""

    def __init__(self) -> None:
        self.running = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            return
        self.running.set()
        await asyncio.Event().wait()


@pytest.fixture(name="server_handlers")
def fx_server_handlers() -> Iterator[list[int]]:
    """SIGINT and SIGTERM handlers of a stand-in server, recording the signals they get; put back after."""
    received: list[int] = []

    def handler(sig: int, _: FrameType | None) -> None:
        received.append(sig)

    saved = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield received
    for sig, previous in saved.items():
        signal.signal(sig, previous)


@pytest.mark.anyio
async def test_a_second_ctrl_c_cuts_the_requests_instead_of_reaching_the_server(server_handlers: list[int]) -> None:
    app = _App()
    guarded = SecondInterrupt(app)  # type: ignore[arg-type]
    lifespan_messages: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    lifespan_messages.put_nowait({"type": "lifespan.startup"})
    started = asyncio.Event()

    async def lifespan_send(message: Any) -> None:
        started.set()

    lifespan = asyncio.create_task(guarded({"type": "lifespan"}, lifespan_messages.get, lifespan_send))  # type: ignore[arg-type]
    await started.wait()
    request = asyncio.create_task(guarded({"type": "http"}, None, None))  # type: ignore[arg-type]
    await app.running.wait()

    signal.raise_signal(signal.SIGINT)  # the first: the server shuts down, waiting for the request
    signal.raise_signal(signal.SIGTERM)  # the supervisor's, with several workers
    await asyncio.sleep(0)
    assert not request.done()
    signal.raise_signal(signal.SIGINT)  # the second: the request is cut, the server is not told
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(request, timeout=10)
    signal.raise_signal(signal.SIGINT)  # the third: the server's own "force quit"

    assert server_handlers == [signal.SIGINT, signal.SIGTERM, signal.SIGINT]
    assert guarded.requests == set()
    lifespan_messages.put_nowait({"type": "lifespan.shutdown"})
    await asyncio.wait_for(lifespan, timeout=10)


@pytest.mark.anyio
async def test_without_a_server_handling_signals_the_defaults_stay() -> None:
    guarded = SecondInterrupt(_App())  # type: ignore[arg-type]
    # Python's default, whatever the shell that started the tests set (nohup ignores SIGINT).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        guarded.chain_signal_handlers(asyncio.get_running_loop())

        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_a_relative_sqlite_store_is_shown_where_it_is() -> None:
    assert describe_state(Settings(session_store="data/minato.db")) == f"sqlite {Path.cwd() / 'data' / 'minato.db'}"


def test_the_env_example_copied_as_is_sets_nothing(environ: dict[str, str]) -> None:
    write((REPO / ".env.example").read_text())

    loaded = load_env_file(None, environ)

    assert loaded is not None
    assert loaded.applied == loaded.ignored == ()


def test_every_line_of_the_env_example_uncommented_is_taken_with_its_default(environ: dict[str, str]) -> None:
    """What a user gets by uncommenting a line without changing it: the default it shows."""
    example = (REPO / ".env.example").read_text()
    write(re.sub(r"^# ([A-Z][A-Z0-9_]*=)", r"\1", example, flags=re.MULTILINE))

    loaded = load_env_file(None, environ)

    assert loaded is not None
    assert set(loaded.applied) == {f"MINATO_{name.upper()}" for name in Settings.__struct_fields__}
    assert set(loaded.ignored) == {"MINATO_PUBLISH_ADDRESS", "MINATO_PUBLISH_PORT", "OLLAMA_KEEP_ALIVE"}
    assert Settings.from_env(environ) == Settings.from_env({})
