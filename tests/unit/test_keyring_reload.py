"""The keyring reads its keys files again: new keys in force, revoked ones gone, and a file that does
not parse, or that would leave no key, changes nothing (a keyed Minato never opens up)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import msgspec
import pytest

from minato.auth.keyring import Keyring
from minato.settings import Settings
from tests.support.keyfiles import ALICE, BOB, CAROL, KEYS_FILE


@pytest.fixture(name="keys")
def fx_keys(tmp_path: Path) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(KEYS_FILE)
    return path


def keyring_of(settings: Settings, keys: Path, **more: object) -> Keyring:
    return Keyring.from_settings(msgspec.structs.replace(settings, keys_file=str(keys), **more))


def test_a_revoked_key_is_gone_and_a_new_one_works_after_a_reload(settings: Settings, keys: Path) -> None:
    keyring = keyring_of(settings, keys)
    held = keyring.identify(ALICE)
    keys.write_text(KEYS_FILE.replace("[keys.alice]", "[keys.dave]").replace(ALICE, "dave-new-key"))

    outcome = keyring.reload()

    assert outcome.refused is None
    assert (outcome.added, outcome.removed, outcome.keys) == (("dave",), ("alice",), 3)
    assert keyring.identify(ALICE) is None
    dave = keyring.identify("dave-new-key")
    assert dave is not None
    assert dave.name == "dave"
    assert held is not None
    assert held.name == "alice", "a caller identified before the reload is untouched"


def test_a_changed_limit_is_reported_and_in_force(settings: Settings, keys: Path) -> None:
    keyring = keyring_of(settings, keys)
    keys.write_text(KEYS_FILE.replace("requests_per_minute = 2", "requests_per_minute = 7"))

    outcome = keyring.reload()

    carol = keyring.identify(CAROL)
    assert outcome.changed == ("carol",)
    assert carol is not None
    assert carol.requests_per_minute == 7


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param("[keys.alice\nkey = ", id="not-toml"),
        pytest.param('[keys.alice]\nkey = "x"\nrole = "root"\n', id="a-bad-role"),
        pytest.param(b"\xff\xfe[keys]".decode("latin-1"), id="not-utf8"),
        pytest.param('[keys.a]\nkey = "same"\n[keys.b]\nkey = "same"\n', id="a-key-twice"),
    ],
)
def test_a_file_edited_into_garbage_keeps_the_keys_in_force(settings: Settings, keys: Path, garbage: str) -> None:
    keyring = keyring_of(settings, keys)
    before = list(keyring.callers)
    keys.write_text(garbage, encoding="latin-1")

    outcome = keyring.reload()

    assert outcome.refused is not None
    assert "MINATO_KEYS_FILE" in outcome.refused
    assert keyring.callers == before
    assert keyring.identify(BOB) is not None
    assert ALICE not in outcome.refused
    assert BOB not in outcome.refused


def test_a_missing_file_keeps_the_keys_in_force(settings: Settings, keys: Path) -> None:
    keyring = keyring_of(settings, keys)
    keys.unlink()

    outcome = keyring.reload()

    assert outcome.refused is not None
    assert "cannot read" in outcome.refused
    assert keyring.identify(CAROL) is not None


def test_a_reload_that_would_leave_no_key_is_refused(settings: Settings, keys: Path) -> None:
    keyring = keyring_of(settings, keys)
    keys.write_text("# every key revoked\n")

    outcome = keyring.reload()

    assert outcome.refused is not None
    assert "no key" in outcome.refused
    assert keyring.enabled
    assert keyring.identify(ALICE) is not None


def test_an_empty_file_is_fine_while_other_keys_stay_in_force(settings: Settings, keys: Path) -> None:
    keyring = keyring_of(settings, keys, api_keys=("plain-env-key",))
    keys.write_text("")

    outcome = keyring.reload()

    assert outcome.refused is None
    assert outcome.removed == ("alice", "bob", "carol")
    assert keyring.identify("plain-env-key") is not None
    assert keyring.identify(ALICE) is None


def test_a_keyless_start_with_an_empty_file_takes_its_first_key(settings: Settings, keys: Path) -> None:
    keys.write_text("")
    keyring = keyring_of(settings, keys)
    assert not keyring.enabled
    keys.write_text(KEYS_FILE)

    outcome = keyring.reload()

    assert outcome.refused is None
    assert keyring.enabled


def test_the_plain_keys_file_is_reloaded_and_the_environments_keys_stay(settings: Settings, tmp_path: Path) -> None:
    plain = tmp_path / "api-keys.txt"
    plain.write_text("first-file-key\n")
    keyring = Keyring.from_settings(msgspec.structs.replace(settings, api_keys=("env-key",), api_keys_file=str(plain)))
    plain.write_text("# rotated\nsecond-file-key\n")

    assert keyring.changed()
    outcome = keyring.reload()

    first_fingerprint = hashlib.sha256(b"first-file-key").hexdigest()[:12]
    assert outcome.removed == (first_fingerprint,)
    assert keyring.identify("first-file-key") is None
    assert keyring.identify("second-file-key") is not None
    assert keyring.identify("env-key") is not None


def test_a_change_on_disk_is_seen_by_its_stamp(settings: Settings, keys: Path) -> None:
    keyring = keyring_of(settings, keys)
    assert not keyring.changed()

    replacement = keys.with_name("new.toml")
    replacement.write_text(KEYS_FILE)
    os.replace(replacement, keys)  # same text, a new inode (as minato keys writes)

    assert keyring.changed()
    keyring.reload()
    assert not keyring.changed()


def test_a_file_that_failed_is_not_read_again_until_it_changes(settings: Settings, keys: Path) -> None:
    keyring = keyring_of(settings, keys)
    keys.write_text("garbage =")
    assert keyring.changed()

    keyring.reload()

    assert not keyring.changed(), "the failure is logged once, not every second"


def test_without_a_keys_file_nothing_is_watched(settings: Settings) -> None:
    keyring = Keyring.from_settings(msgspec.structs.replace(settings, api_keys=("k",)))

    assert keyring.files == ()
    assert not keyring.changed()
    assert keyring.reload().refused is None
    assert keyring.identify("k") is not None


def test_a_thousand_keys_are_all_in_force_after_a_reload(settings: Settings, keys: Path) -> None:
    keyring = keyring_of(settings, keys)
    tables = "".join(
        f'[keys.k{n}]\nkey = "sha256:{hashlib.sha256(f"key-{n}".encode()).hexdigest()}"\nweight = {n % 9 + 1}\n'
        for n in range(1000)
    )
    keys.write_text(tables)

    outcome = keyring.reload()

    assert outcome.refused is None
    assert (len(outcome.added), len(outcome.removed), outcome.keys) == (1000, 3, 1000)
    assert all(keyring.identify(f"key-{n}") is not None for n in (0, 1, 499, 998, 999))
    assert {caller.name for _, caller in keyring.callers} == {f"k{n}" for n in range(1000)}
