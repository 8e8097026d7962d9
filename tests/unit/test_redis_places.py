"""A key's bound on the generations it runs at once, across replicas sharing a real ``redis-server``: the
bound holds across them, first come first served within one, a dead replica's places expire, nothing stays
held after a cancellation, and every failure of Redis fails closed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

import pytest
import structlog
from redis.asyncio import Redis

from minato.errors import StateUnavailableError
from minato.state.places import SharedKeyConcurrency
from minato.state.protocols import HeldTurn, SharedState
from minato.state.redis.link import PREFIX
from tests.support.holding import cancel_while_holding
from tests.support.redis_server import RedisServer
from tests.unit.test_redis_state import PATIENCE, _eventually, _polled, _replica

pytestmark = pytest.mark.anyio

PLACES = f"{PREFIX}places:k"


@pytest.fixture(name="raw")
async def fx_raw(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client, to look at what Minato keeps."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _concurrency(state: SharedState) -> SharedKeyConcurrency:
    return cast("SharedKeyConcurrency", state.concurrency)


async def _until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not done():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.001)


async def _gone(raw: Redis, key: str = PLACES) -> None:
    """Wait until ``key`` is gone from Redis (the places given back on their own tasks)."""

    async def gone() -> bool:
        return await raw.exists(key) == 0

    await _eventually(gone)


def _nothing_held_here(state: SharedState) -> bool:
    concurrency = _concurrency(state)
    return not concurrency._local._running and not concurrency._local._waiting and not concurrency._asking._locks


async def test_a_keys_bound_holds_across_two_replicas_while_other_keys_run_beside(redis_url: str, raw: Redis) -> None:
    async with _replica(redis_url) as one, _replica(redis_url) as two:
        first = await one.concurrency.acquire("k", 2)
        second = await two.concurrency.acquire("k", 2)
        third = asyncio.create_task(one.concurrency.acquire("k", 2))
        other = await asyncio.wait_for(two.concurrency.acquire("other", 2), PATIENCE)
        await _polled(raw, 5)  # the waiter tried again and again
        assert not third.done(), "two places are held: the third waits, though its replica holds only one"
        assert await one.concurrency.running("k") == await two.concurrency.running("k") == 2
        assert await raw.zcard(PLACES) == 2
        assert 0 < await raw.pttl(PLACES) <= 30_000, "the set vanishes by itself once its places expire"

        second.release()
        second.release()  # idempotent
        taken = await asyncio.wait_for(third, PATIENCE)
        assert await two.concurrency.running("k") == 2

        for held in (first, taken, other):
            held.release()
        await _gone(raw)
        await _gone(raw, f"{PREFIX}places:other")
        assert _nothing_held_here(one)
        assert _nothing_held_here(two)


async def test_a_replicas_requests_get_their_keys_places_in_arrival_order(redis_url: str, raw: Redis) -> None:
    async with _replica(redis_url) as one, _replica(redis_url) as two:
        theirs = [await two.concurrency.acquire("k", 2) for _ in range(2)]
        order: list[str] = []
        asking = _concurrency(one)._asking._locks
        local = _concurrency(one)._local

        async def request(name: str) -> HeldTurn:
            held = await one.concurrency.acquire("k", 2)
            order.append(name)
            return held

        first = asyncio.create_task(request("a"))
        await _polled(raw, 2)  # it polls Redis
        second = asyncio.create_task(request("b"))
        await _until(lambda: asking[("", "k")].users == 2, "the second request never waited to ask Redis")
        third = asyncio.create_task(request("c"))
        await _until(lambda: len(local._waiting.get("k", ())) == 1, "the third request never queued")

        for held in theirs:
            held.release()
        held_a, held_b = await asyncio.wait_for(asyncio.gather(first, second), PATIENCE)
        assert order == ["a", "b"]
        assert not third.done(), "both places are held"

        held_a.release()
        held_c = await asyncio.wait_for(third, PATIENCE)
        assert order == ["a", "b", "c"]
        held_b.release()
        held_c.release()
        await _gone(raw)


async def test_the_places_of_a_replica_that_died_free_the_key_by_themselves(redis_url: str, raw: Redis) -> None:
    async with _replica(redis_url, turn_lease=0.3) as survivor:
        async with _replica(redis_url, turn_lease=0.3) as dying:
            await dying.concurrency.acquire("k", 1)  # never released; leaving stops its renewal as a crash would
            assert 0 < await raw.pttl(PLACES) <= 300

        held = await asyncio.wait_for(survivor.concurrency.acquire("k", 1), PATIENCE)
        assert await survivor.concurrency.running("k") == 1
        held.release()
        await _gone(raw)


async def test_a_held_place_is_renewed_past_its_lease(redis_url: str, raw: Redis) -> None:
    async with _replica(redis_url, turn_lease=0.3) as one, _replica(redis_url, turn_lease=0.3) as two:
        held = await one.concurrency.acquire("k", 1)
        (token,) = await raw.zrange(PLACES, 0, -1)
        waiting = asyncio.create_task(two.concurrency.acquire("k", 1))
        renewals, expiry = 0, 0.0

        async def renewed_for_three_leases() -> bool:  # Redis's clock runs the places: watch them on it
            nonlocal renewals, expiry
            members = cast("list[tuple[bytes, float]]", await raw.zrange(PLACES, 0, -1, withscores=True))
            assert [member for member, _ in members] == [token], "the place never lapsed nor changed hands"
            renewals, expiry = renewals + (members[0][1] > expiry), members[0][1]
            return renewals >= 10

        await _eventually(renewed_for_three_leases)
        assert not waiting.done(), "the running generation kept its place"
        held.release()
        (await asyncio.wait_for(waiting, PATIENCE)).release()
        await _gone(raw)


async def test_a_place_found_lost_while_renewing_is_logged(redis_url: str, raw: Redis) -> None:
    async with _replica(redis_url, turn_lease=0.3) as state:
        with structlog.testing.capture_logs() as logs:
            held = await state.concurrency.acquire("k", 1)
            await raw.delete(PLACES)  # as if it had expired, a stalled replica's

            async def logged() -> bool:
                return any(e["event"] == "key_place_lost" for e in logs)

            await _eventually(logged)
            held.release()

    lost = next(e for e in logs if e["event"] == "key_place_lost")
    assert (lost["log_level"], lost["key"]) == ("error", "k")


async def test_a_cancelled_wait_for_a_place_leaves_nothing_held(redis_url: str, raw: Redis) -> None:
    async with _replica(redis_url) as one, _replica(redis_url) as two:
        held = await one.concurrency.acquire("k", 1)
        polling = asyncio.create_task(two.concurrency.acquire("k", 1))
        await _polled(raw, 2)
        queued = asyncio.create_task(two.concurrency.acquire("k", 1))
        local = _concurrency(two)._local
        await _until(lambda: len(local._waiting.get("k", ())) == 1, "the request never queued")
        for waiter in (queued, polling):
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        held.release()

        await _gone(raw)
        assert _nothing_held_here(two)


async def test_a_cancelled_request_still_gives_its_place_back(redis_url: str, raw: Redis) -> None:
    async with _replica(redis_url) as one, _replica(redis_url) as two:
        await cancel_while_holding(lambda: one.concurrency.acquire("k", 1), PATIENCE)

        (await asyncio.wait_for(two.concurrency.acquire("k", 1), PATIENCE)).release()  # the lease is 30 s
        await _gone(raw)


async def test_redis_stopped_mid_way_fails_every_waiter_and_newcomer_closed(redis_server: RedisServer) -> None:
    async with _replica(redis_server.url) as one, _replica(redis_server.url) as two:
        held = await one.concurrency.acquire("k", 1)
        waiting = asyncio.create_task(two.concurrency.acquire("k", 1))
        await _until(lambda: ("", "k") in _concurrency(two)._asking._locks, "the waiter never asked Redis")
        redis_server.stop()

        with pytest.raises(StateUnavailableError) as refused:
            await asyncio.wait_for(waiting, PATIENCE)
        with pytest.raises(StateUnavailableError):
            await asyncio.wait_for(two.concurrency.acquire("other", 1), PATIENCE)
        with pytest.raises(StateUnavailableError):
            await asyncio.wait_for(two.concurrency.running("k"), PATIENCE)
        with structlog.testing.capture_logs() as logs:
            held.release()  # never raises: the place would expire by itself
            await _concurrency(one)._pending.wait(PATIENCE)
        assert refused.value.status_code == 503
        assert refused.value.headers["Retry-After"]
        assert [e["key"] for e in logs if e["event"] == "key_place_not_released"] == ["k"]
        assert _nothing_held_here(one)
        assert _nothing_held_here(two)

        redis_server.start()  # an empty Redis, on the same port
        again = await asyncio.wait_for(two.concurrency.acquire("k", 1), PATIENCE)
        assert await one.concurrency.running("k") == 1
        again.release()
