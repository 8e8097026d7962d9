"""Keys without a restart, in process: the keys file changed on disk or a SIGHUP (``KeyWatch.ask``)
puts the new keys in force, a broken file changes nothing, and ``GET /keys`` shows what is in force."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from minato.auth.keys_edit import NewKey, add_key, revoke_key
from minato.settings import Settings
from minato.web.app import create_app
from minato.web.keywatch import KeyWatch
from tests.support.keyfiles import ALICE, BOB, CAROL, KEYS_FILE
from tests.support.payloads import chat_answer
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
#: A reload follows a change within the watch's second; this bounds the wait on a loaded machine.
DEADLINE = 10.0


async def until(check: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await check():  # type: ignore[misc]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {DEADLINE} s")
        await asyncio.sleep(0.02)


def write(path: Path, text: str) -> None:
    path.write_text(text)


def edit_unseen(path: Path, old: str, new: str) -> None:
    """Edit ``path`` in place to the same size, and put its modification time back: a change that
    its ``stat`` does not show (as an editor may make within one timestamp tick)."""
    seen = path.stat()
    text = path.read_text()
    assert len(old) == len(new)
    path.write_text(text.replace(old, new))
    os.utime(path, ns=(seen.st_atime_ns, seen.st_mtime_ns))


@pytest.fixture(name="keys")
def fx_keys(tmp_path: Path) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(KEYS_FILE)
    return path


@pytest.fixture(name="app")
def fx_app(settings: Settings, ollama: ServedOllama, keys: Path) -> Litestar:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    return create_app(msgspec.structs.replace(settings, keys_file=str(keys), api_keys=("plain-env-key",)))


@pytest.fixture(name="client")
async def fx_client(app: Litestar) -> AsyncIterator[Client]:
    async with AsyncTestClient(app=app) as client:
        yield client


def watch_of(app: Litestar) -> KeyWatch:
    keywatch: KeyWatch = app.state.keywatch
    return keywatch


async def status(client: Client, key: str | None, path: str = "/llama3.2") -> int:
    headers = {"X-API-Key": key} if key else {}
    return (await client.get(path, params={"message": "hi"}, headers=headers)).status_code


async def test_a_key_revoked_on_disk_gets_401_and_a_new_one_works(client: Client, keys: Path) -> None:
    assert await status(client, CAROL) == 200
    revoke_key(str(keys), "carol")
    new = add_key(str(keys), NewKey(name="dave"))

    async def revoked() -> bool:
        return await status(client, CAROL) == 401

    await until(revoked, "the revoked key refused")
    assert await status(client, new) == 200
    assert await status(client, BOB) == 200


async def test_a_file_edited_into_garbage_keeps_the_old_keys(app: Litestar, client: Client, keys: Path) -> None:
    write(keys, "[keys.alice\nkey = ")

    outcome = await watch_of(app).reload("test")

    assert outcome.refused is not None
    assert await status(client, BOB) == 200
    assert await status(client, "not-a-key") == 401
    registry = watch_of(app).metrics.registry
    assert registry.get_sample_value("minato_keys_reloads_total", {"result": "refused"}) == 1


async def test_a_file_emptied_keeps_the_file_keys_only_if_none_would_be_left(
    settings: Settings, ollama: ServedOllama, keys: Path
) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    app = create_app(msgspec.structs.replace(settings, keys_file=str(keys)))
    async with AsyncTestClient(app=app) as client:
        write(keys, "")
        outcome = await watch_of(app).reload("test")

        assert outcome.refused is not None
        assert await status(client, None) == 401, "never: no keys, never: open"
        assert await status(client, CAROL) == 200


async def test_sighup_reloads_even_what_the_watch_cannot_see(app: Litestar, client: Client, keys: Path) -> None:
    """The key changes in place, same size, same modification time: only the SIGHUP path reads it."""
    edit_unseen(keys, f'key = "{CAROL}"', f'key = "{CAROL[:-1]}X"')
    assert not watch_of(app).keyring.changed()

    watch_of(app).ask()

    async def revoked() -> bool:
        return await status(client, CAROL) == 401

    await until(revoked, "the changed key refused")
    assert await status(client, CAROL[:-1] + "X") == 200


async def test_a_keyless_start_with_an_empty_file_requires_keys_once_one_is_added(
    settings: Settings, ollama: ServedOllama, tmp_path: Path
) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    keys = tmp_path / "empty.toml"
    keys.write_text("# no keys yet\n")
    app = create_app(msgspec.structs.replace(settings, keys_file=str(keys)))
    async with AsyncTestClient(app=app) as client:
        assert await status(client, None) == 200
        key = add_key(str(keys), NewKey(name="first", role="admin"))
        await watch_of(app).reload("test")

        assert await status(client, None) == 401
        assert await status(client, key) == 200


async def test_get_keys_lists_the_keys_in_force_for_an_admin(client: Client) -> None:
    response = await client.get("/keys", headers={"X-API-Key": BOB})

    assert response.status_code == 200
    listed = {key["name"]: key for key in response.json()}
    fingerprint = hashlib.sha256(b"plain-env-key").hexdigest()[:12]
    assert set(listed) == {fingerprint, "alice", "bob", "carol"}
    assert listed["alice"] == {
        "name": "alice",
        "role": "user",
        "models": ["qwen3:*", "llama3.2:latest"],
        "requests_per_minute": 0,
        "tokens_per_day": 5,
        "max_concurrent": 0,
        "weight": 1,
        "usage_today": {"requests": 0, "tokens": {"prompt": 0, "completion": 0, "total": 0}},
    }
    assert listed["bob"]["role"] == "admin"
    assert listed["carol"]["requests_per_minute"] == 2
    assert ALICE not in response.text
    assert BOB not in response.text
    assert hashlib.sha256(BOB.encode()).hexdigest() not in response.text


@pytest.mark.parametrize(("key", "expected"), [(CAROL, 403), ("plain-env-key", 403), (None, 401), ("nope", 401)])
async def test_get_keys_is_an_admin_route(client: Client, key: str | None, expected: int) -> None:
    assert await status(client, key, "/keys") == expected


async def test_get_keys_follows_a_reload(app: Litestar, client: Client, keys: Path) -> None:
    add_key(str(keys), NewKey(name="erin", models=("qwen3:*",), weight=4))
    await watch_of(app).reload("test")

    response = await client.get("/keys", headers={"X-API-Key": BOB})

    [erin] = [key for key in response.json() if key["name"] == "erin"]
    assert (erin["models"], erin["weight"], erin["role"]) == (["qwen3:*"], 4, "user")


async def test_get_keys_shows_each_keys_usage_over_the_last_24_h(client: Client) -> None:
    assert await status(client, CAROL) == 200

    async def counted() -> bool:
        listed = (await client.get("/keys", headers={"X-API-Key": BOB})).json()
        return [key["usage_today"]["requests"] for key in listed if key["name"] == "carol"] == [1]

    await until(counted, "carol's request counted")
    listed = (await client.get("/keys", headers={"X-API-Key": BOB})).json()
    usage = {key["name"]: key["usage_today"] for key in listed}
    assert usage["carol"]["tokens"]["completion"] > 0
    assert (
        usage["carol"]["tokens"]["total"] == usage["carol"]["tokens"]["prompt"] + usage["carol"]["tokens"]["completion"]
    )
    assert usage["alice"]["requests"] == 0
