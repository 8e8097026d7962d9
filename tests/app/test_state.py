"""Shared state that cannot answer, through HTTP: the limiter, the quota and the turn lease fail closed."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from structlog.testing import capture_logs

from minato.auth.caller import Caller
from minato.errors import StateUnavailableError
from minato.settings import Settings
from minato.state.memory import LocalTurnLocks, TokenQuota
from minato.state.sqlite.tables import UNAVAILABLE
from minato.state.windows import Bucket, Standing
from minato.web.app import create_app
from tests.support.payloads import chat_answer
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio


# -- failing closed, through HTTP -----------------------------------------------------------


class _Unavailable:
    async def check(self, key: str, per_minute: int) -> Bucket:
        raise StateUnavailableError(UNAVAILABLE)

    async def peek(self, key: str, per_minute: int) -> Bucket:
        raise StateUnavailableError(UNAVAILABLE)


async def test_a_limiter_that_cannot_answer_is_a_503_with_retry_after(settings: Settings, ollama: ServedOllama) -> None:
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())
    keyed = msgspec.structs.replace(settings, api_keys=("k",), rate_limit_per_minute=10)
    app = create_app(keyed, limiter=_Unavailable())

    async with AsyncTestClient(app=app) as client:
        response = await client.get("/llama3.2", params={"message": "hi"}, headers={"X-API-Key": "k"})

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["detail"] == UNAVAILABLE
    assert not chat.called


async def test_a_quota_that_cannot_answer_is_a_503(settings: Settings, ollama: ServedOllama, tmp_path: Path) -> None:
    class Unavailable(TokenQuota):
        async def check(self, caller: Caller) -> Standing:
            raise StateUnavailableError(UNAVAILABLE)

    chat = ollama.post("/api/chat").respond(200, json=chat_answer())
    keys = tmp_path / "keys.toml"
    keys.write_text('[keys.quoted]\nkey = "a-key-with-a-quota"\ntokens_per_day = 5\n')
    keyed = msgspec.structs.replace(settings, keys_file=str(keys))
    app = create_app(keyed, quota=Unavailable())

    async with AsyncTestClient(app=app) as client:
        response = await client.get("/llama3.2", params={"message": "hi"}, headers={"X-API-Key": "a-key-with-a-quota"})

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert not chat.called


async def test_a_quota_that_cannot_count_an_answer_logs_it_and_the_answer_stands(
    settings: Settings, ollama: ServedOllama, tmp_path: Path
) -> None:
    class Uncounting(TokenQuota):
        async def charge(self, caller: Caller, tokens: int) -> None:
            raise StateUnavailableError(UNAVAILABLE)

    ollama.post("/api/chat").respond(200, json=chat_answer())
    keys = tmp_path / "keys.toml"
    keys.write_text('[keys.quoted]\nkey = "a-key-with-a-quota"\ntokens_per_day = 5\n')
    keyed = msgspec.structs.replace(settings, keys_file=str(keys))
    app = create_app(keyed, quota=Uncounting())

    with capture_logs() as logs:
        async with AsyncTestClient(app=app) as client:
            response = await client.get(
                "/llama3.2", params={"message": "hi"}, headers={"X-API-Key": "a-key-with-a-quota"}
            )

    assert response.status_code == 200
    assert [log["tokens"] for log in logs if log["event"] == "token_quota_charge_failed"] == [3]


async def test_a_turn_that_cannot_take_its_lease_is_a_503_and_never_reaches_ollama(
    settings: Settings, ollama: ServedOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unavailable(self: LocalTurnLocks, owner: str, session_id: str) -> None:
        raise StateUnavailableError(UNAVAILABLE)

    monkeypatch.setattr(LocalTurnLocks, "acquire", unavailable)
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())
    app = create_app(settings)

    async with AsyncTestClient(app=app) as client:
        response = await client.get("/llama3.2", params={"message": "hi", "session": "s"})
        without = await client.get("/llama3.2", params={"message": "hi"})

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["detail"] == UNAVAILABLE
    assert without.status_code == 200, "a request without a conversation takes no turn"
    assert chat.call_count == 1
