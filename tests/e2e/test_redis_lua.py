"""Minato's Lua scripts against a real ``redis-server``: every ``lua/*.lua`` file is used and compiles, the
limits' scripts answer exactly as :mod:`minato.state.windows` (the arithmetic of the memory and SQLite
homes) for the same sequence of times and costs, the usage scripts as the memory ledger, and a key's
places exactly as the SQLite home's for the same sequence of times and calls: one algorithm in every home."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from importlib.resources import files
from pathlib import Path

import pytest
from redis.asyncio import Redis

from minato.observability.metrics import Metrics
from minato.settings import Settings
from minato.state.places import KeyBound
from minato.state.redis.conversations import RedisStore
from minato.state.redis.limits import RATE_BUCKET_TTL_MS, RedisQuota, RedisRateLimiter
from minato.state.redis.link import Link, lua
from minato.state.redis.places import RedisPlaceStore
from minato.state.redis.turns import redis_turns
from minato.state.redis.usage import RedisUsage
from minato.state.sqlite.places import SqlitePlaceStore
from minato.state.sqlite.tables import Tables
from minato.state.usage import MemoryUsage, Tally
from minato.state.windows import BUCKET_SECONDS, WINDOW_MINUTES, QuotaWindow, Standing, peek, take_one

pytestmark = pytest.mark.anyio

DAY = WINDOW_MINUTES * BUCKET_SECONDS


@pytest.fixture(name="client")
async def fx_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _number(value: float) -> str:
    return repr(float(value))


async def test_every_script_file_is_used_and_compiles(client: Redis, redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, session_store="memory://")
    link = Link(client, settings, Metrics())
    RedisStore(link, settings)
    redis_turns(link, settings)
    RedisRateLimiter(link)
    RedisQuota(link)
    RedisUsage(link)
    RedisPlaceStore(link, settings.turn_lease)

    shipped = {path.name for path in files("minato.state.redis").joinpath("lua").iterdir()}
    used = {f"{name}.lua" for names in link.scripts for name in names}
    assert shipped == used, "every script file is loaded by a primitive, and every one it loads is shipped"
    for names in link.scripts:
        digest = await client.script_load(lua(*names))
        assert await client.script_exists(digest) == [True], names


def _times(seed: int, count: int) -> list[float]:
    """Increasing times: small steps, steps across minutes, a day to the second (the window's edge), and
    jumps past the window."""
    rng = random.Random(seed)
    now, times = 1_700_000_000.0 + rng.random(), []
    for _ in range(count):
        steps = [0.0, rng.random(), rng.uniform(1, 90), rng.uniform(600, 7200), float(DAY), rng.uniform(DAY / 3, DAY)]
        now += rng.choice(steps)
        times.append(now)
    return times


@pytest.mark.parametrize("seed", range(4))
async def test_the_token_bucket_script_answers_as_take_one(client: Redis, seed: int) -> None:
    script = client.register_script(lua("clock", "token_bucket"))
    rng = random.Random(seed)
    per_minute = rng.choice([1, 3, 60, 1000])
    state: tuple[float, float] | None = None
    for now in _times(seed, 300):
        tokens_before, last = state if state is not None else (float(per_minute), now)
        tokens, expected = take_one(tokens_before, last, now, per_minute)
        state = (tokens, now)

        if rng.random() < 0.2:  # a peek answers as windows.peek and changes nothing
            looked = await script(keys=[f"t:bucket:{seed}"], args=[per_minute, RATE_BUCKET_TTL_MS, _number(now), "1"])
            assert float(looked[0]) == peek(tokens_before, last, now, per_minute).wait, f"at {now!r}"
        answer = await script(keys=[f"t:bucket:{seed}"], args=[per_minute, RATE_BUCKET_TTL_MS, _number(now)])

        assert (float(answer[0]), float(answer[1])) == (expected, tokens), f"at {now!r}"


@pytest.mark.parametrize("seed", range(4))
async def test_the_quota_scripts_answer_as_the_quota_window(client: Redis, seed: int) -> None:
    check = client.register_script(lua("clock", "quota_check"))
    charge = client.register_script(lua("clock", "quota_charge"))
    rng = random.Random(seed)
    window, key, limit = QuotaWindow(), f"t:quota:{seed}", rng.choice([100, 5_000, 50_000])
    answers = []
    for now in _times(seed, 300):
        if rng.random() < 0.6:
            cost = rng.randint(1, limit // 3)
            window.charge(now, cost)
            await charge(keys=[key], args=[cost, BUCKET_SECONDS, WINDOW_MINUTES, _number(now)])
            continue
        expected = window.standing(now, limit)

        wait, total, resets = await check(keys=[key], args=[limit, BUCKET_SECONDS, WINDOW_MINUTES, _number(now)])

        assert Standing(float(wait), max(0, limit - int(total)), float(resets)) == expected, f"at {now!r}"
        answers.append(expected)
    assert any(answer.wait for answer in answers), "the sequence went over the quota at times"
    assert any(not answer.wait for answer in answers), "and was under it at others"


@pytest.mark.parametrize("seed", range(2))
async def test_the_usage_scripts_answer_as_the_memory_ledger(client: Redis, redis_url: str, seed: int) -> None:
    link = Link(client, Settings(redis_url=redis_url, session_store="memory://"), Metrics())
    rng = random.Random(seed)
    clock = [0.0]
    memory = MemoryUsage(lambda: clock[0])
    keys, models = [f"k{seed}", f"k{seed}:x"], ["llama3.2:1b", "hf.co/o/r:q4"]
    answers = []
    for now in _times(seed, 200):
        clock[0] = now
        at = RedisUsage(link, now=_number(now))
        if rng.random() < 0.7:
            key, model, prompt, completion = (
                rng.choice(keys),
                rng.choice(models),
                rng.randint(0, 50),
                rng.randint(0, 50),
            )
            memory.count(key, model, prompt, completion)
            await at.add({(key, model): Tally(1, prompt, completion)})
            continue
        expected = await memory.totals(keys)

        assert await at.totals(keys) == expected, f"at {now!r}"
        answers.append(expected)
    assert any(answers), "some reads found usage"
    assert not all(answers), "and some found the window empty"


@pytest.mark.parametrize("seed", range(4))
async def test_the_place_scripts_answer_as_the_sqlite_places(client: Redis, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    # Leases far longer than the test runs: the set's own expiry (on Redis's real clock) never comes.
    lease, limit = rng.choice([30.0, 60.0, 90.5]), rng.choice([1, 2, 3])
    now = 1_700_000_000.0 + rng.random()
    tables = Tables(tmp_path / "s.db", 5.0, lambda: now)
    await tables.open()
    sqlite = SqlitePlaceStore(tables, lease)
    take = client.register_script(lua("clock", "place_take"))
    renew = client.register_script(lua("clock", "place_renew"))
    count = client.register_script(lua("clock", "place_count"))
    key, places, lease_ms = KeyBound(f"k{seed}", limit), [f"t:places:{seed}"], math.ceil(lease * 1000)
    answers: dict[str, list[object]] = {"take": [], "renew": [], "count": []}
    try:
        for step in range(400):
            steps = [0.0, rng.uniform(0, lease / 10), rng.uniform(0, lease / 4), lease / 3, lease, 2 * lease]
            now += rng.choice(steps)
            token, call = f"h{rng.randrange(6)}", rng.choice(["take", "take", "take", "renew", "delete", "count"])
            if call == "take":
                expected: object = await sqlite.take(key, token)
                answer: object = bool(await take(keys=places, args=[token, limit, lease_ms, _number(now)]))
            elif call == "renew":
                expected = await sqlite.extend(key, token)
                answer = bool(await renew(keys=places, args=[token, lease_ms, _number(now)]))
            elif call == "delete":
                await sqlite.delete(key, token)
                await client.zrem(places[0], token)
                continue
            else:
                expected = await sqlite.running(key.key)
                answer = await count(keys=places, args=[_number(now)])
            assert answer == expected, f"step {step}: {call} {token} at {now!r}"
            answers[call].append(answer)
    finally:
        await tables.close()
    assert {True, False} <= set(answers["take"]), "takes found room, and found none"
    assert {True, False} <= set(answers["renew"]), "renewals found their place, and found it gone"
    assert {0, limit} <= set(answers["count"]), "the key was at its bound at times, and idle at others"
