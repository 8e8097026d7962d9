"""Keys settings and backpressure without the app: hashed keys, the admission queue, abandoned waits."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import pytest
import structlog

from minato.auth.keyring import Keyring, refuse_unsafe_start
from minato.core.admission import Admission
from minato.errors import OverloadedError, SettingsError
from minato.observability.logging import configure_logging
from minato.ollama.names import canonical_model_name
from minato.server.cli import main
from minato.settings import Settings
from tests.support.waiting import settled

pytestmark = pytest.mark.anyio


def test_keys_may_be_given_hashed_and_in_a_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# team keys\nplain-one\nsha256:{hashlib.sha256(b'hashed-two').hexdigest()}  # ci\n\n")

    keyring = Keyring.from_settings(Settings(api_keys_file=str(keys)))

    assert keyring.identify("plain-one") is not None
    assert keyring.identify("hashed-two") is not None
    assert keyring.identify("sha256:" + hashlib.sha256(b"hashed-two").hexdigest()) is None


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        (Settings(api_keys=("sha256:nothex",)), "MINATO_API_KEYS"),
        (Settings(admin_keys=("sha256:" + "a" * 63,)), "MINATO_ADMIN_KEYS"),
        (Settings(api_keys_file="/nonexistent/keys"), "MINATO_API_KEYS_FILE"),
    ],
)
def test_bad_key_settings_name_the_variable(settings: Settings, variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Keyring.from_settings(settings)


# -- backpressure ----------------------------------------------------------------------------


async def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    admission = Admission(total=1, per_model=0, queue=0, wait_seconds=5)
    held = await admission.acquire("m")

    with pytest.raises(OverloadedError) as refused:
        await admission.acquire("m")

    assert refused.value.status_code == 503
    assert refused.value.headers["Retry-After"].isdigit()
    held.release()


async def test_a_waiter_gets_the_slot_released_by_another_and_no_more_run_than_allowed() -> None:
    admission = Admission(total=2, per_model=1, queue=10, wait_seconds=5)
    first = await admission.acquire("a")
    other_model = await admission.acquire("b")
    waiting = asyncio.ensure_future(admission.acquire("a"))
    await settled(lambda: admission.waiting == 1, "the second acquire queued")

    assert not waiting.done(), "model a is at its own limit"
    first.release()
    second = await asyncio.wait_for(waiting, timeout=1)
    assert admission.running == 2
    second.release()
    second.release()  # releasing twice gives back one slot only
    other_model.release()
    assert admission.running == 0


async def test_waiting_too_long_is_a_503_and_leaves_no_trace() -> None:
    admission = Admission(total=1, per_model=0, queue=5, wait_seconds=0.05)
    held = await admission.acquire("m")

    with pytest.raises(OverloadedError, match="no generation slot"):
        await admission.acquire("m")

    held.release()
    assert admission.running == 0
    assert (await admission.acquire("m")).model == "m"


async def test_an_abandoned_wait_frees_its_place_in_the_queue() -> None:
    admission = Admission(total=1, per_model=0, queue=1, wait_seconds=5)
    held = await admission.acquire("m")
    waiting = asyncio.ensure_future(admission.acquire("m"))
    await settled(lambda: admission.waiting == 1, "the wait queued")

    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    held.release()

    assert admission.running == 0
    assert (await admission.acquire("m")).model == "m"


# -- safe by default ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "settings", "refused"),
    [
        ("127.0.0.1", Settings(), False),
        ("localhost", Settings(), False),
        ("::1", Settings(), False),
        ("0.0.0.0", Settings(), True),
        ("192.168.1.5", Settings(), True),
        ("0.0.0.0", Settings(api_keys=("k",)), False),
        ("0.0.0.0", Settings(auth="disabled"), False),
    ],
)
def test_without_keys_minato_only_serves_on_loopback(host: str, settings: Settings, refused: bool) -> None:
    reason = refuse_unsafe_start(settings, host, Keyring.from_settings(settings))

    assert (reason is not None) == refused
    if reason:
        assert "MINATO_API_KEYS" in reason
        assert "MINATO_AUTH=disabled" in reason


def test_the_cli_refuses_a_public_address_without_keys(
    served: list[tuple[object, ...]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "MINATO_API_KEYS" in capsys.readouterr().err
    assert served == []


def test_json_tracebacks_carry_no_local_variables() -> None:
    out = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=out)
    api_key = "sk-local-variable-secret"
    try:
        raise RuntimeError(f"boom with {len(api_key)} chars")
    except RuntimeError:
        structlog.get_logger("minato.test").exception("failed")
    finally:
        structlog.reset_defaults()

    logged = out.getvalue()
    assert "boom with 24 chars" in logged, "the traceback itself is logged"
    assert api_key not in logged, "but not the local variables around it"


def test_the_user_keep_alive_limit_must_be_a_duration_of_at_least_a_second() -> None:
    with pytest.raises(SettingsError, match="MINATO_USER_MAX_KEEP_ALIVE"):
        Settings.from_env({"MINATO_USER_MAX_KEEP_ALIVE": "0"})
    with pytest.raises(SettingsError, match="MINATO_USER_MAX_KEEP_ALIVE"):
        Settings.from_env({"MINATO_USER_MAX_KEEP_ALIVE": "soon"})
    assert Settings.from_env({"MINATO_USER_MAX_KEEP_ALIVE": "2h"}).user_max_keep_alive == "2h"


async def test_spellings_of_one_model_share_its_per_model_bound() -> None:
    admission = Admission(total=10, per_model=1, queue=0, wait_seconds=1)
    slot = admission.try_acquire(canonical_model_name("hang"))

    assert slot is not None
    for spelling in ("hang:latest", "Hang", "library/hang", "registry.ollama.ai/library/hang:latest"):
        assert admission.try_acquire(canonical_model_name(spelling)) is None, spelling
    assert admission.try_acquire(canonical_model_name("other")) is not None
