"""The keys file (``MINATO_KEYS_FILE``) read and checked: defaults, patterns, rates, each bad field."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from minato.auth.caller import Caller, Role
from minato.auth.keyring import Keyring
from minato.auth.keys import NamedKey, read_keys_file
from minato.errors import SettingsError
from minato.settings import Settings
from minato.state.memory import TokenQuota
from minato.state.windows import Standing
from tests.support.keyfiles import ALICE, BOB, CAROL, KEYS_FILE, _file

pytestmark = pytest.mark.anyio
# -- the file ----------------------------------------------------------------------------------


def test_a_good_keys_file_is_read_with_defaults_and_canonical_patterns(tmp_path: Path) -> None:
    keys = read_keys_file(_file(tmp_path, KEYS_FILE))

    assert keys == [
        NamedKey(
            name="alice",
            digest=hashlib.sha256(ALICE.encode()).digest(),
            admin=False,
            models=("qwen3:*", "llama3.2:latest"),
            requests_per_minute=None,
            tokens_per_day=5,
            max_concurrent=None,
            weight=1,
        ),
        NamedKey(
            name="bob",
            digest=hashlib.sha256(BOB.encode()).digest(),
            admin=True,
            models=("llama3.2*",),
            requests_per_minute=None,
            tokens_per_day=0,
            max_concurrent=None,
            weight=1,
        ),
        NamedKey(
            name="carol",
            digest=hashlib.sha256(CAROL.encode()).digest(),
            admin=False,
            models=None,
            requests_per_minute=2,
            tokens_per_day=0,
            max_concurrent=None,
            weight=1,
        ),
    ]


def test_named_keys_take_the_global_rate_unless_they_name_their_own(tmp_path: Path) -> None:
    settings = Settings(keys_file=_file(tmp_path, KEYS_FILE), rate_limit_per_minute=30)
    keyring = Keyring.from_settings(settings)

    alice, carol = keyring.identify(ALICE), keyring.identify(CAROL)

    assert alice is not None
    assert carol is not None
    assert (alice.name, alice.role, alice.requests_per_minute, alice.tokens_per_day) == ("alice", Role.USER, 30, 5)
    assert alice.fingerprint == hashlib.sha256(ALICE.encode()).hexdigest()[:12]
    assert carol.requests_per_minute == 2
    assert keyring.identify("sha256:" + hashlib.sha256(BOB.encode()).hexdigest()) is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        pytest.param('key = "k"\nrole = "boss"', "keys.alice.role: must be 'user' or 'admin'", id="role"),
        pytest.param('key = "k"\nrol = "user"', "keys.alice: Object contains unknown field `rol`", id="unknown-field"),
        pytest.param("key = 1", "keys.alice.key: Expected `str`, got `int`", id="key-type"),
        pytest.param('role = "user"', "keys.alice: Object missing required field `key`", id="no-key"),
        pytest.param('key = ""', "keys.alice.key: must not be empty", id="empty-key"),
        pytest.param('key = "sha256:abc"', "keys.alice.key: 'sha256:' must be followed by 64 hex digits", id="hash"),
        pytest.param('key = "k"\nmodels = "qwen3"', "keys.alice.models: Expected `array | null`", id="models-type"),
        pytest.param('key = "k"\nmodels = []', "keys.alice.models: must name at least one pattern", id="no-models"),
        pytest.param('key = "k"\nmodels = [" "]', "keys.alice.models: a pattern must not be empty", id="empty-model"),
        pytest.param('key = "k"\nrequests_per_minute = -1', "keys.alice.requests_per_minute: Expected `int` >= 0"),
        pytest.param('key = "k"\ntokens_per_day = "lots"', "keys.alice.tokens_per_day: Expected `int`, got `str`"),
    ],
)
def test_each_bad_field_stops_start_up_naming_the_table_and_field(tmp_path: Path, table: str, message: str) -> None:
    path = _file(tmp_path, f"[keys.alice]\n{table}\n")

    with pytest.raises(SettingsError) as refused:
        Keyring.from_settings(Settings(keys_file=path))

    assert str(refused.value).startswith(f"MINATO_KEYS_FILE: {message}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param('[keys."a b"]\nkey = "k"', "keys.a b: a key's name must be 1 to 64", id="unsafe-name"),
        pytest.param(f'[keys.{"n" * 65}]\nkey = "k"', "a key's name must be 1 to 64", id="long-name"),
        pytest.param('[key.alice]\nkey = "k"', "unknown table 'key'", id="misspelt-table"),
        pytest.param("keys = 3", "keys: must be tables", id="keys-not-tables"),
        pytest.param("[keys.alice]\nkey = 3", "keys.alice.key", id="value"),
        pytest.param("[keys.alice\nkey = 'k'", "is not valid TOML", id="not-toml"),
        pytest.param("[keys]\nalice = 3", "keys.alice: Expected `object`, got `int`", id="entry-not-a-table"),
    ],
)
def test_a_malformed_file_stops_start_up_saying_why(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=r"^MINATO_KEYS_FILE: ") as refused:
        read_keys_file(_file(tmp_path, text))

    assert message in str(refused.value)


def test_the_same_key_twice_is_an_error_that_never_shows_the_key(tmp_path: Path) -> None:
    text = f'[keys.alice]\nkey = "{ALICE}"\n\n[keys.bob]\nkey = "sha256:{hashlib.sha256(ALICE.encode()).hexdigest()}"\n'

    with pytest.raises(SettingsError) as refused:
        read_keys_file(_file(tmp_path, text))

    assert str(refused.value) == "MINATO_KEYS_FILE: keys.bob.key: the same key as keys.alice"
    assert ALICE not in str(refused.value)


def test_a_named_key_also_given_without_a_name_is_an_error(tmp_path: Path) -> None:
    settings = Settings(keys_file=_file(tmp_path, KEYS_FILE), admin_keys=(CAROL,))

    with pytest.raises(SettingsError, match=r"keys\.carol\.key: also configured without a name"):
        Keyring.from_settings(settings)


def test_an_unreadable_keys_file_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^MINATO_KEYS_FILE: cannot read .*missing\.toml"):
        Keyring.from_settings(Settings(keys_file=str(tmp_path / "missing.toml")))
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[keys]")
    with pytest.raises(SettingsError, match=r"^MINATO_KEYS_FILE: .* is not valid TOML"):
        read_keys_file(str(binary))


def test_a_scope_matches_every_spelling_of_a_model_by_its_canonical_name() -> None:
    caller = Caller(fingerprint="f", role=Role.USER, name="n", models=("qwen3:*", "llama3.2:latest"))

    for allowed in ("qwen3:0.6b", "QWEN3:latest", "library/qwen3", "llama3.2", "registry.ollama.ai/library/llama3.2"):
        assert caller.allows(allowed), allowed
    for refused in ("llama3.2:1b", "gemma3", "qwen3-coder:latest", "hf.co/x/qwen3:q4"):
        assert not caller.allows(refused), refused
    assert Caller(fingerprint="f", role=Role.USER, name="n").allows("anything")


# -- rates and quotas --------------------------------------------------------------------------


async def test_the_quota_is_a_rolling_window_of_whole_minutes() -> None:
    now = [1_000_000.0]
    quota = TokenQuota(clock=lambda: now[0])
    caller = Caller(fingerprint="f", role=Role.USER, name="n", tokens_per_day=10)

    await quota.charge(caller, 6)
    assert (await quota.check(caller))[:2] == (0.0, 4)
    now[0] += 3600
    await quota.charge(caller, 4)
    wait, left, _ = await quota.check(caller)

    first_minute = 1_000_000 // 60
    assert wait == (first_minute + 24 * 60 + 1) * 60 - now[0], "the oldest tokens must expire first"
    assert left == 0
    now[0] += wait - 1
    assert (await quota.check(caller)).wait > 0
    now[0] += 1
    assert (await quota.check(caller))[:2] == (0.0, 6), "the first minute's 6 tokens expired"
    assert await quota.check(Caller(fingerprint="g", role=Role.USER, name="m", tokens_per_day=1)) == Standing(0.0, 1)


async def test_keys_without_a_quota_are_never_tracked() -> None:
    quota = TokenQuota()
    unlimited = Caller(fingerprint="f", role=Role.USER, name="n")

    await quota.charge(unlimited, 1_000_000)

    assert await quota.check(dataclasses.replace(unlimited, tokens_per_day=1)) == Standing(0.0, 1)


def test_a_keys_max_concurrent_and_weight_are_read_and_the_setting_is_the_default(tmp_path: Path) -> None:
    text = f'''
[keys.alice]
key = "{ALICE}"
max_concurrent = 2
weight = 3
[keys.bob]
key = "{BOB}"
'''
    keyring = Keyring.from_settings(Settings(keys_file=_file(tmp_path, text), api_keys=(CAROL,), key_max_concurrent=4))

    alice, bob, carol = keyring.identify(ALICE), keyring.identify(BOB), keyring.identify(CAROL)
    assert alice is not None
    assert (alice.max_concurrent, alice.weight) == (2, 3)
    assert bob is not None
    assert (bob.max_concurrent, bob.weight) == (4, 1)
    assert carol is not None
    assert (carol.max_concurrent, carol.weight) == (4, 1)


@pytest.mark.parametrize(("field", "value"), [("weight", "0"), ("weight", "1001"), ("max_concurrent", "-1")])
def test_a_bad_weight_or_max_concurrent_is_refused_naming_the_field(tmp_path: Path, field: str, value: str) -> None:
    text = f'[keys.alice]\nkey = "{ALICE}"\n{field} = {value}\n'
    with pytest.raises(SettingsError, match=rf"keys\.alice\.{field}"):
        read_keys_file(_file(tmp_path, text))
