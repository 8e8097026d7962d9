"""``minato keys add|list|revoke``: the keys file edited in place of a person, atomically, keeping
everything else, and never holding a key (only its digest)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from minato.auth.keys import read_keys_file
from minato.auth.keys_edit import KEY_PREFIX
from minato.server.cli import main
from tests.support.environment import fx_clean_environment  # noqa: F401 - fixtures, found by name

pytestmark = pytest.mark.usefixtures("monkeypatch")  # a clean environment (tests.support.environment)

COMMENTED = """# The team's keys (managed with minato keys)
[keys.ops]  # the on-call admin
key = "sha256:{ops}"   # rotated in May
role = "admin"

# CI runs with this one
[keys.ci]
key = "sha256:{ci}"
requests_per_minute = 30
"""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(name="keys")
def fx_keys(tmp_path: Path) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(COMMENTED.format(ops=_digest("ops-key"), ci=_digest("ci-key")))
    return path


def keys_add(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["keys", "add", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_add_prints_only_the_key_and_the_file_keeps_only_its_digest(
    keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = keys_add(
        capsys, "alice", "--file", str(keys), "--models", "qwen3:*", "llama3.2", "--requests-per-minute", "6",
        "--tokens-per-day", "1000", "--max-concurrent", "2", "--weight", "3",
    )  # fmt: skip

    key = out.strip()
    assert code == 0
    assert out == key + "\n", "stdout holds the key and nothing else"
    assert key.startswith(KEY_PREFIX)
    assert len(key) >= len(KEY_PREFIX) + 40
    text = keys.read_text()
    assert key not in text
    assert f'key = "sha256:{_digest(key)}"' in text
    [alice] = [named for named in read_keys_file(str(keys)) if named.name == "alice"]
    assert alice.digest == hashlib.sha256(key.encode()).digest()
    assert (alice.models, alice.requests_per_minute, alice.tokens_per_day) == (("qwen3:*", "llama3.2:latest"), 6, 1000)
    assert (alice.max_concurrent, alice.weight, alice.admin) == (2, 3, False)


def test_two_keys_added_are_different(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = keys_add(capsys, "a", "--file", str(keys))[1]
    second = keys_add(capsys, "b", "--file", str(keys))[1]

    assert first != second


def test_the_file_is_written_with_mode_0600_and_the_rest_of_it_kept(
    keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys.chmod(0o644)
    before = keys.read_text()

    keys_add(capsys, "alice", "--file", str(keys), "--role", "admin")

    after = keys.read_text()
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert after.startswith(before), "the other tables, their comments and their layout are kept"
    assert [named.name for named in read_keys_file(str(keys))] == ["ops", "ci", "alice"]


def test_a_missing_file_is_created_with_mode_0600(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "new-keys.toml"

    code, out, _ = keys_add(capsys, "first", "--file", str(path))

    assert code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [named] = read_keys_file(str(path))
    assert named.digest == hashlib.sha256(out.strip().encode()).digest()


def test_the_file_is_replaced_not_rewritten_in_place(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A reader holding the old file sees it whole: the new one is a new inode renamed over it."""
    inode = keys.stat().st_ino
    with keys.open() as held:
        keys_add(capsys, "alice", "--file", str(keys))
        old = held.read()

    assert keys.stat().st_ino != inode
    assert "alice" not in old
    assert [p.name for p in keys.parent.iterdir()] == [keys.name], "no temporary file is left behind"


def test_a_name_that_exists_is_refused_and_nothing_is_written(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = keys.read_bytes()

    code, out, err = keys_add(capsys, "ops", "--file", str(keys))

    assert (code, out) == (2, "")
    assert "already has a key named 'ops'" in err
    assert keys.read_bytes() == before


@pytest.mark.parametrize("name", ["bad name", "", "x" * 65, "é", "a/b", "a:b"])
def test_a_name_that_is_not_a_key_name_is_refused(keys: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    before = keys.read_bytes()

    code, out, err = keys_add(capsys, name, "--file", str(keys))

    assert (code, out) == (2, "")
    assert "is not a key name" in err
    assert keys.read_bytes() == before


def test_a_file_that_does_not_parse_is_not_written(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys.write_text("[keys.ops\nkey = ")

    code, out, err = keys_add(capsys, "alice", "--file", str(keys))

    assert (code, out) == (2, "")
    assert "not valid TOML" in err
    assert keys.read_text() == "[keys.ops\nkey = "


def test_a_file_the_keys_check_refuses_is_not_written(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Valid TOML that Minato would refuse (an unknown field): the new text fails the keys file's own
    check before it replaces anything, so a running Minato never sees it."""
    keys.write_text('[keys.ops]\nkey = "sha256:' + _digest("ops-key") + '"\ncolour = "blue"\n')
    before = keys.read_bytes()

    code, out, err = keys_add(capsys, "alice", "--file", str(keys))

    assert (code, out) == (2, "")
    assert "keys.ops" in err
    assert "colour" in err
    assert keys.read_bytes() == before
    assert [p.name for p in keys.parent.iterdir()] == [keys.name]


def test_revoke_removes_the_table_and_keeps_the_comments_of_the_others(
    keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["keys", "revoke", "ops", "--file", str(keys)])

    text = keys.read_text()
    assert code == 0
    assert [named.name for named in read_keys_file(str(keys))] == ["ci"]
    assert "# The team's keys (managed with minato keys)" in text
    assert "# CI runs with this one" in text
    assert "requests_per_minute = 30" in text
    assert "the on-call admin" not in text
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600


def test_revoking_an_unknown_name_fails_and_writes_nothing(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = keys.read_bytes()

    code = main(["keys", "revoke", "nobody", "--file", str(keys)])

    assert code == 1
    assert "has no key named 'nobody'" in capsys.readouterr().err
    assert keys.read_bytes() == before


def test_list_shows_names_roles_scopes_and_limits_never_a_digest(
    keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_add(capsys, "alice", "--file", str(keys), "--models", "qwen3:*", "--tokens-per-day", "500")

    assert main(["keys", "list", "--file", str(keys)]) == 0
    table = capsys.readouterr().out
    assert main(["keys", "list", "--file", str(keys), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)

    assert table.splitlines()[0].split() == [
        "NAME",
        "ROLE",
        "MODELS",
        "REQUESTS/MIN",
        "TOKENS/DAY",
        "CONCURRENT",
        "WEIGHT",
    ]
    assert table.splitlines()[3].split() == ["alice", "user", "qwen3:*", "default", "500", "default", "1"]
    assert listed[1] == {
        "name": "ci",
        "role": "user",
        "models": None,
        "requests_per_minute": 30,
        "tokens_per_day": 0,
        "max_concurrent": None,
        "weight": 1,
    }
    assert [key["name"] for key in listed] == ["ops", "ci", "alice"]
    assert _digest("ops-key") not in table + json.dumps(listed)
    assert "sha256" not in table + json.dumps(listed)


def test_the_default_file_is_minato_keys_file_from_the_environment(
    keys: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINATO_KEYS_FILE", str(keys))

    code, out, _ = keys_add(capsys, "alice")

    assert code == 0
    assert "alice" in keys.read_text()
    assert out.strip() not in keys.read_text()


def test_the_default_file_may_come_from_the_dotenv(
    keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text(f"MINATO_KEYS_FILE={keys}\n")
    monkeypatch.chdir(tmp_path)
    # The command loads the .env into the process environment, as minato serve does: a copy, put back after.
    monkeypatch.setattr(os, "environ", dict(os.environ))

    assert main(["keys", "revoke", "ci"]) == 0
    assert [named.name for named in read_keys_file(str(keys))] == ["ops"]


def test_without_a_keys_file_the_command_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./.env here

    code, out, err = keys_add(capsys, "alice")

    assert (code, out) == (2, "")
    assert "MINATO_KEYS_FILE" in err


@pytest.mark.parametrize(
    "option", [("--requests-per-minute", "-1"), ("--weight", "0"), ("--weight", "1001"), ("--role", "root")]
)
def test_a_limit_out_of_range_is_refused_before_the_file_is_touched(
    keys: Path, capsys: pytest.CaptureFixture[str], option: tuple[str, str]
) -> None:
    before = keys.read_bytes()

    with pytest.raises(SystemExit) as exited:
        main(["keys", "add", "alice", "--file", str(keys), *option])

    assert exited.value.code == 2
    assert capsys.readouterr().out == ""
    assert keys.read_bytes() == before
