"""The shared state in Redis, against a real ``redis-server``: the store's contract, turn leases between two
replicas, shared limits and quotas, and failing closed while Redis is away."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import structlog
from redis.asyncio import Redis

from minato.auth.caller import Caller, Role
from minato.errors import SessionDamagedError, StateUnavailableError
from minato.observability.metrics import Metrics
from minato.settings import Settings
from minato.state.conversations import Bounds, Caps, StoredMessage
from minato.state.protocols import SharedState
from minato.state.redis.home import open_redis_state
from minato.state.windows import Standing
from tests.support.holding import cancel_while_holding
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

WIDE = Bounds(max_messages=1000, image_budget=10**9)
ROOMY = Caps(max_sessions=10_000, max_per_key=10_000)
#: A bound on waits that must end (a lease freeing, a call failing): far above what they take.
PATIENCE = 10.0


def _settings(redis_url: str, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {"redis_url": redis_url, "redis_timeout": 0.5, "session_store": "memory://"}
    return Settings(**(fields | overrides))


@contextlib.asynccontextmanager
async def _replica(redis_url: str, metrics: Metrics | None = None, **overrides: Any) -> AsyncIterator[SharedState]:
    """One Minato process's view of the shared state."""
    async with open_redis_state(_settings(redis_url, **overrides), metrics or Metrics()) as state:
        yield state


@pytest.fixture(name="state")
async def fx_state(redis_url: str) -> AsyncIterator[SharedState]:
    """The shared state, as one replica sees it."""
    async with _replica(redis_url) as state:
        yield state


@pytest.fixture(name="raw")
async def fx_raw(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client, to look at (and tamper with) what Minato keeps."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _pair(n: float, images: list[str] | None = None) -> list[StoredMessage]:
    return [
        StoredMessage(role="user", content=f"q{n}", images=images or [], image_count=len(images or []), at=n),
        StoredMessage(role="assistant", content=f"a{n}", model="m", at=n),
    ]


async def _append(
    state: SharedState, owner: str, session_id: str, n: float, images: list[str] | None = None, caps: Caps = ROOMY
) -> None:
    await state.store.append(owner, session_id, _pair(n, images), WIDE, caps=caps, now=n)


async def _eventually(check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + PATIENCE
    while not await check():
        assert time.monotonic() < deadline, "the condition never came true"
        await asyncio.sleep(0.02)


async def _scripts_run(raw: Redis) -> int:
    """How many scripts Redis has run so far (a turn's every attempt at a lease is one)."""
    stats = await raw.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))


async def _polled(raw: Redis, times: int) -> None:
    """Wait until Redis has run ``times`` more scripts (a waiting turn's attempts at its lease)."""
    start = await _scripts_run(raw)

    async def enough() -> bool:
        return await _scripts_run(raw) >= start + times

    await _eventually(enough)


# --- conversations ---------------------------------------------------------------------------------------


async def test_a_conversation_keeps_its_messages_in_order_and_trims_the_oldest_pairs(state: SharedState) -> None:
    for n in range(4):
        await state.store.append("", "s", _pair(n), Bounds(max_messages=6, image_budget=10**6), caps=ROOMY, now=100 + n)

    session = await state.store.get("", "s")

    assert session is not None
    assert [m.content for m in session.messages] == ["q1", "a1", "q2", "a2", "q3", "a3"]
    assert [(m.role, m.model, m.at) for m in session.messages[:2]] == [("user", None, 1), ("assistant", "m", 1)]
    assert (session.created_at, session.last_active) == (100, 103)
    assert await state.store.get("", "other") is None


async def test_old_images_over_a_conversations_budget_go_first_and_their_text_stays(state: SharedState) -> None:
    bounds = Bounds(max_messages=10, image_budget=100)
    await state.store.append("", "s", _pair(1, ["A" * 60]), bounds, caps=ROOMY, now=1)
    await state.store.append("", "s", _pair(2, ["B" * 60]), bounds, caps=ROOMY, now=2)
    await state.store.append("", "s", _pair(3, ["C" * 200]), bounds, caps=ROOMY, now=3)

    session = await state.store.get("", "s")

    assert session is not None
    assert [m.images for m in session.messages if m.role == "user"] == [[], [], []], "even a new one over budget"
    assert [m.image_count for m in session.messages if m.role == "user"] == [1, 1, 1]
    assert [m.content for m in session.messages] == ["q1", "a1", "q2", "a2", "q3", "a3"]
    assert await state.store.enforce_image_budget(0) == 0, "stripped images no longer count"


async def test_a_turn_within_the_budget_keeps_its_images_for_follow_ups(state: SharedState) -> None:
    bounds = Bounds(max_messages=10, image_budget=100)
    await state.store.append("", "s", _pair(1, ["A" * 60]), bounds, caps=ROOMY, now=1)
    await state.store.append("", "s", _pair(2, ["B" * 30]), bounds, caps=ROOMY, now=2)

    session = await state.store.get("", "s")

    assert session is not None
    assert [m.images for m in session.messages if m.role == "user"] == [["A" * 60], ["B" * 30]]


async def test_the_system_prompt_survives_trimming_and_can_be_removed_keeping_the_messages(
    state: SharedState,
) -> None:
    await state.store.set_system_prompt("", "s", "Be brief.", caps=ROOMY, now=1)
    for n in range(5):
        await state.store.append("", "s", _pair(n), Bounds(max_messages=2, image_budget=0), caps=ROOMY, now=2 + n)
    kept = await state.store.get("", "s")
    await state.store.set_system_prompt("", "s", None, caps=ROOMY, now=10)
    removed = await state.store.get("", "s")

    assert kept is not None
    assert removed is not None
    assert (kept.system_prompt, [m.content for m in kept.messages]) == ("Be brief.", ["q4", "a4"])
    assert (removed.system_prompt, [m.content for m in removed.messages]) == (None, ["q4", "a4"])
    assert removed.last_active == 10


async def test_a_system_prompt_alone_creates_a_conversation_without_messages(state: SharedState) -> None:
    await state.store.set_system_prompt("bbbbbbbbbbbb", "s", "Only French.", caps=ROOMY, now=7)

    session = await state.store.get("bbbbbbbbbbbb", "s")

    assert session is not None
    assert (session.system_prompt, session.messages, session.created_at) == ("Only French.", [], 7)


async def test_two_owners_each_have_their_own_conversation_with_the_same_id(state: SharedState) -> None:
    await _append(state, "aaaaaaaaaaaa", "abc", 1)
    await state.store.set_system_prompt("bbbbbbbbbbbb", "abc", "B's prompt", caps=ROOMY, now=2)
    await _append(state, "aaaaaaaaaaaa", "abc-d", 3)  # an id the first is a prefix of

    mine = await state.store.get("aaaaaaaaaaaa", "abc")
    theirs = await state.store.get("bbbbbbbbbbbb", "abc")

    assert mine is not None
    assert theirs is not None
    assert (mine.system_prompt, len(mine.messages)) == (None, 2)
    assert (theirs.system_prompt, len(theirs.messages)) == ("B's prompt", 0)
    assert await state.store.get("cccccccccccc", "abc") is None
    assert await state.store.owners_of("abc") == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
    assert await state.store.owners_of("abc-d") == ["aaaaaaaaaaaa"]
    assert await state.store.owners_of("ab") == []


async def test_deleting_one_owners_conversation_leaves_the_others_and_twice_is_fine(state: SharedState) -> None:
    await _append(state, "aaaaaaaaaaaa", "abc", 1, ["A" * 10])
    await _append(state, "bbbbbbbbbbbb", "abc", 2)

    await state.store.delete("cccccccccccc", "abc")
    await state.store.delete("aaaaaaaaaaaa", "abc")
    await state.store.delete("aaaaaaaaaaaa", "abc")

    assert await state.store.get("aaaaaaaaaaaa", "abc") is None
    assert await state.store.get("bbbbbbbbbbbb", "abc") is not None
    assert await state.store.owners_of("abc") == ["bbbbbbbbbbbb"]
    assert await state.store.list("aaaaaaaaaaaa", 0, 10) == ([], 0)
    assert await state.store.enforce_image_budget(0) == 0, "its images went with it"


async def test_a_conversation_deleted_and_created_again_starts_empty(state: SharedState) -> None:
    await _append(state, "", "s", 1, ["A" * 10])
    await state.store.set_system_prompt("", "s", "old", caps=ROOMY, now=1)
    await state.store.delete("", "s")
    await _append(state, "", "s", 2)

    session = await state.store.get("", "s")

    assert session is not None
    assert (session.system_prompt, [m.content for m in session.messages], session.created_at) == (None, ["q2", "a2"], 2)


async def test_a_listing_is_most_recent_first_ties_by_id_then_owner_and_pages(state: SharedState) -> None:
    await _append(state, "aaaaaaaaaaaa", "one", 1)
    await _append(state, "bbbbbbbbbbbb", "two", 2)
    await _append(state, "bbbbbbbbbbbb", "tie", 3)
    await _append(state, "aaaaaaaaaaaa", "tie", 3)
    await _append(state, "aaaaaaaaaaaa", "three", 3)

    every, every_total = await state.store.list(None, 0, 10)
    own, own_total = await state.store.list("aaaaaaaaaaaa", 0, 10)
    page, page_total = await state.store.list(None, 1, 2)

    assert [(s.owner, s.id) for s in every] == [
        ("aaaaaaaaaaaa", "three"),
        ("aaaaaaaaaaaa", "tie"),
        ("bbbbbbbbbbbb", "tie"),
        ("bbbbbbbbbbbb", "two"),
        ("aaaaaaaaaaaa", "one"),
    ]
    assert every_total == 5
    assert [(s.id, s.message_count, s.last_active) for s in own] == [("three", 2, 3), ("tie", 2, 3), ("one", 2, 1)]
    assert own_total == 3
    assert ([(s.owner, s.id) for s in page], page_total) == ([("aaaaaaaaaaaa", "tie"), ("bbbbbbbbbbbb", "tie")], 5)
    assert await state.store.list(None, 0, 0) == ([], 5)
    assert await state.store.list(None, 10, 5) == ([], 5)
    assert await state.store.list("cccccccccccc", 0, 10) == ([], 0)


async def test_expiry_drops_idle_conversations_then_the_least_recent_beyond_the_cap(state: SharedState) -> None:
    for n, sid in enumerate(["old", "mid", "new", "newest"]):
        await _append(state, "", sid, 10 * (n + 1), ["X" * 10])

    dropped = await state.store.expire(idle_before=15, caps=Caps(max_sessions=2, max_per_key=2))

    assert dropped == 2
    page, total = await state.store.list(None, 0, 10)
    assert ([s.id for s in page], total) == (["newest", "new"], 2)
    assert await state.store.owners_of("mid") == []
    assert await state.store.enforce_image_budget(20) == 0, "only the two kept conversations' images count"
    assert await state.store.expire(idle_before=15, caps=Caps(max_sessions=2, max_per_key=2)) == 0


async def test_the_session_cap_is_applied_by_every_write(state: SharedState) -> None:
    two = Caps(max_sessions=2, max_per_key=2)
    await _append(state, "", "first", 1, caps=two)
    await _append(state, "", "second", 2, caps=two)
    await state.store.set_system_prompt("", "third", "hi", caps=two, now=3)
    await _append(state, "", "second", 4, caps=two)
    await _append(state, "", "fourth", 5, caps=two)

    page, total = await state.store.list(None, 0, 10)

    assert ([s.id for s in page], total) == (["fourth", "second"], 2)


async def test_every_write_gives_the_conversation_the_session_ttl(state: SharedState, raw: Redis) -> None:
    await _append(state, "aaaaaaaaaaaa", "s", time.time())
    await raw.pexpire("minato:c:aaaaaaaaaaaa:s", 1000)
    await state.store.set_system_prompt("aaaaaaaaaaaa", "s", "hi", caps=ROOMY, now=time.time())

    ttl_ms = await raw.pttl("minato:c:aaaaaaaaaaaa:s")

    assert 7 * 24 * 3600 * 1000 - 60_000 < ttl_ms <= 7 * 24 * 3600 * 1000
    everything = await raw.keys("*")
    assert everything
    assert set(everything) == set(await raw.keys("minato:*")), "one prefix for every key"


async def test_a_conversation_idle_past_its_ttl_vanishes_by_itself_and_the_sweep_forgets_it(redis_url: str) -> None:
    async with _replica(redis_url, session_ttl=0.2) as state:
        await _append(state, "", "brief", time.time(), ["A" * 50])
        async with _replica(redis_url) as lasting:
            await _append(lasting, "", "lasting", time.time(), ["B" * 50])

        async def vanished() -> bool:
            return await state.store.get("", "brief") is None

        await _eventually(vanished)
        listed = await state.store.list(None, 0, 10)
        dropped = await state.store.expire(
            idle_before=0, caps=Caps(max_sessions=100, max_per_key=100)
        )  # nothing idle by its own time
        after = await state.store.list(None, 0, 10)
        stripped = await state.store.enforce_image_budget(50)

    assert ([s.id for s in listed[0]], listed[1]) == (["lasting"], 1), "a vanished one is not listed"
    assert dropped == 1
    assert ([s.id for s in after[0]], after[1]) == (["lasting"], 1)
    assert await state.store.owners_of("brief") == []
    assert stripped == 0, "the vanished conversation's images no longer count"


async def test_appends_racing_on_one_conversation_from_two_replicas_all_land(redis_url: str) -> None:
    async with _replica(redis_url) as one, _replica(redis_url) as two:
        await asyncio.gather(*(_append(one if n % 2 else two, "", "s", n, ["I" * 10]) for n in range(8)))
        await one.store.enforce_image_budget(30)

        session = await two.store.get("", "s")

    assert session is not None
    assert sorted(m.content for m in session.messages if m.role == "user") == [f"q{n}" for n in range(8)]
    assert sum(m.image_bytes for m in session.messages) == 30


async def test_a_conversation_whose_record_cannot_be_read_is_damaged_and_can_be_deleted(
    state: SharedState, raw: Redis
) -> None:
    await _append(state, "", "s", 1)
    await raw.hset("minato:c::s", "m1", b"\xc1 not msgpack")

    with pytest.raises(SessionDamagedError, match="conversation 's' is damaged"):
        await state.store.get("", "s")
    await state.store.delete("", "s")
    assert await state.store.get("", "s") is None


# --- turns -----------------------------------------------------------------------------------------------


async def test_one_turn_at_a_time_across_two_replicas_and_the_next_gets_it_on_release(
    redis_url: str, raw: Redis
) -> None:
    async with _replica(redis_url) as one, _replica(redis_url) as two:
        first = await one.turns.acquire("", "s")
        waiting = asyncio.create_task(two.turns.acquire("", "s"))
        elsewhere = await two.turns.acquire("", "other")  # other conversations never wait
        another_owner = await two.turns.acquire("aaaaaaaaaaaa", "s")
        await _polled(raw, 5)  # the waiter tried again and again
        assert not waiting.done(), "the second replica waits while the first holds the turn"

        first.release()
        first.release()  # idempotent
        second = await asyncio.wait_for(waiting, PATIENCE)
        second.release()
        elsewhere.release()
        another_owner.release()


async def test_a_held_turn_is_renewed_past_its_lease(redis_url: str, raw: Redis) -> None:
    async with _replica(redis_url, turn_lease=0.3) as one, _replica(redis_url, turn_lease=0.3) as two:
        held = await one.turns.acquire("", "s")
        token = await raw.get("minato:turn::s")
        waiting = asyncio.create_task(two.turns.acquire("", "s"))
        renewals, left = 0, 300

        async def renewed_for_three_leases() -> bool:  # Redis's clock runs the leases: watch them on it
            nonlocal renewals, left
            now = await raw.pttl("minato:turn::s")
            assert await raw.get("minato:turn::s") == token, "the lease never lapsed nor changed hands"
            renewals, left = renewals + (now > left), now
            return renewals >= 9

        await _eventually(renewed_for_three_leases)
        assert not waiting.done(), "the running turn kept its lease"
        held.release()
        (await asyncio.wait_for(waiting, PATIENCE)).release()


async def test_the_lease_of_a_holder_that_died_frees_the_conversation_by_itself(redis_url: str) -> None:
    async with _replica(redis_url, turn_lease=0.3) as survivor:
        async with _replica(redis_url, turn_lease=0.3) as dying:
            await dying.turns.acquire("", "s")  # never released; leaving stops its renewal as a crash would

        held = await asyncio.wait_for(survivor.turns.acquire("", "s"), PATIENCE)
        held.release()


async def test_releasing_a_lease_that_another_turn_now_holds_leaves_it_alone(redis_url: str, raw: Redis) -> None:
    async with _replica(redis_url) as state:
        held = await state.turns.acquire("", "s")
        await raw.set("minato:turn::s", "someone else's token", px=30_000)  # as if it had expired and been taken
        held.release()
    # Leaving the state waited for the release under way.

    assert await raw.get("minato:turn::s") == b"someone else's token"


async def test_a_lease_found_lost_while_renewing_is_logged(redis_url: str, raw: Redis) -> None:
    async with _replica(redis_url, turn_lease=0.3) as state:
        with structlog.testing.capture_logs() as logs:
            held = await state.turns.acquire("", "s")
            await raw.set("minato:turn::s", "taken", px=30_000)

            async def logged() -> bool:
                return any(e["event"] == "turn_lease_lost" for e in logs)

            await _eventually(logged)
            held.release()

    assert next(e for e in logs if e["event"] == "turn_lease_lost")["log_level"] == "error"


async def test_a_cancelled_request_still_releases_its_turn(redis_url: str) -> None:
    async with _replica(redis_url) as one, _replica(redis_url) as two:
        await cancel_while_holding(lambda: one.turns.acquire("", "s"), PATIENCE)

        (await asyncio.wait_for(two.turns.acquire("", "s"), PATIENCE)).release()  # the lease is 30 s


async def test_a_cancelled_wait_for_a_turn_leaves_nothing_held(redis_url: str, raw: Redis) -> None:
    async with _replica(redis_url) as one, _replica(redis_url) as two:
        held = await one.turns.acquire("", "s")
        waiting = asyncio.create_task(two.turns.acquire("", "s"))
        await _polled(raw, 2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        held.release()

        async def free() -> bool:
            return await raw.exists("minato:turn::s") == 0

        await _eventually(free)


# --- limits, quotas, affinity ----------------------------------------------------------------------------


async def test_a_rate_limit_is_one_bucket_across_replicas(redis_url: str) -> None:
    async with _replica(redis_url) as one, _replica(redis_url) as two:
        waits = [(await (one if n % 2 else two).limiter.check("aaaaaaaaaaaa", 3)).wait for n in range(6)]
        elsewhere = (await one.limiter.check("bbbbbbbbbbbb", 3)).wait
        peeked = await two.limiter.peek("aaaaaaaaaaaa", 3)

    assert waits[:3] == [0, 0, 0]
    assert all(0 < wait <= 20 for wait in waits[3:]), waits  # one request comes back every 20 s
    assert elsewhere == 0
    assert peeked.remaining == 0
    assert 0 < peeked.wait <= 20
    assert 40 < peeked.reset <= 60, "the bucket of 3 is empty: full again in up to a minute"


async def test_a_refused_request_takes_nothing_from_the_bucket(state: SharedState) -> None:
    taken = await state.limiter.check("k", 60)
    assert taken.wait == 0
    assert taken.remaining == 59
    for _ in range(59):
        await state.limiter.check("k", 60)
    first = (await state.limiter.check("k", 60)).wait
    second = (await state.limiter.check("k", 60)).wait

    assert 0 < second <= first <= 1, "a request comes back every second, refusals do not push it further"


def _caller(fingerprint: str, tokens_per_day: int) -> Caller:
    return Caller(fingerprint=fingerprint, role=Role.USER, name=fingerprint, tokens_per_day=tokens_per_day)


async def test_a_token_quota_is_shared_across_replicas(redis_url: str) -> None:
    alice = _caller("aaaaaaaaaaaa", 100)
    async with _replica(redis_url) as one, _replica(redis_url) as two:
        await one.quota.charge(alice, 60)
        under = await two.quota.check(alice)
        await two.quota.charge(alice, 50)
        over = await one.quota.check(alice)
        await one.quota.charge(_caller("bbbbbbbbbbbb", 0), 10**6)  # no quota: not counted
        others = await two.quota.check(_caller("bbbbbbbbbbbb", 100))
        unlimited = await two.quota.check(_caller("aaaaaaaaaaaa", 0))

    assert under[:2] == (0.0, 40)
    assert 23 * 3600 < under.resets <= 24 * 3600 + 120, "every token counted leaves the window a day later"
    assert 23 * 3600 < over.wait <= 24 * 3600 + 120, "the first tokens expire a day (and at most a minute) later"
    assert over.left == 0
    assert others == Standing(0.0, 100, 0.0)
    assert unlimited.wait == 0


async def test_the_backend_a_conversation_used_is_known_to_every_replica(redis_url: str, raw: Redis) -> None:
    async with _replica(redis_url) as one, _replica(redis_url) as two:
        await one.affinity.put(":s", "gpu-1:11434")
        seen = await two.affinity.get(":s")
        unknown = await two.affinity.get(":other")

    assert (seen, unknown) == ("gpu-1:11434", None)
    assert 0 < await raw.pttl("minato:affinity::s") <= 7 * 24 * 3600 * 1000


# --- Redis away ------------------------------------------------------------------------------------------


def _every_member(state: SharedState) -> dict[str, Callable[[], Awaitable[object]]]:
    alice = _caller("aaaaaaaaaaaa", 100)
    return {
        "get": lambda: state.store.get("", "s"),
        "owners_of": lambda: state.store.owners_of("s"),
        "append": lambda: state.store.append("", "s", _pair(1), WIDE, caps=ROOMY, now=1),
        "set_system_prompt": lambda: state.store.set_system_prompt("", "s", "x", caps=ROOMY, now=1),
        "delete": lambda: state.store.delete("", "s"),
        "list": lambda: state.store.list(None, 0, 10),
        "expire": lambda: state.store.expire(0, Caps(max_sessions=10, max_per_key=10)),
        "enforce_image_budget": lambda: state.store.enforce_image_budget(0),
        "acquire": lambda: state.turns.acquire("", "s"),
        "concurrency.acquire": lambda: state.concurrency.acquire("k", 1),
        "concurrency.running": lambda: state.concurrency.running("k"),
        "limiter": lambda: state.limiter.check("k", 3),
        "quota.check": lambda: state.quota.check(alice),
        "quota.charge": lambda: state.quota.charge(alice, 5),
        "affinity.get": lambda: state.affinity.get("k"),
        "affinity.put": lambda: state.affinity.put("k", "b:1"),
    }


async def _fails_closed(state: SharedState, where: str) -> None:
    for name, call in _every_member(state).items():
        with pytest.raises(StateUnavailableError) as caught:
            await asyncio.wait_for(call(), PATIENCE)
        assert caught.value.detail == (f"the shared state (Redis at {where}) cannot be reached; try again shortly"), (
            name
        )
        assert caught.value.headers["Retry-After"]


async def test_with_redis_stopped_every_member_fails_closed_and_after_a_restart_all_work_again(
    redis_server: RedisServer,
) -> None:
    metrics = Metrics()
    url = f"redis://:s3cret@127.0.0.1:{redis_server.port}/0"  # a password never shows in Minato's sentence
    async with _replica(redis_server.url, metrics) as state:
        await _append(state, "", "s", 1)
        assert await state.health.ping() is None
        assert metrics.registry.get_sample_value("minato_redis_up") == 1
        redis_server.stop()

        await _fails_closed(state, f"127.0.0.1:{redis_server.port}")
        why = await state.health.ping()
        assert metrics.registry.get_sample_value("minato_redis_up") == 0
        assert state.health.name == "redis"

        redis_server.start()  # an empty Redis, on the same port: nothing is rebuilt
        assert await state.health.ping() is None
        assert metrics.registry.get_sample_value("minato_redis_up") == 1
        for name, call in _every_member(state).items():
            result = await call()
            if name.endswith("acquire"):
                result.release()  # type: ignore[attr-defined]
        assert (await state.limiter.check("fresh", 3)).wait == 0

    async with _replica(url) as hidden:
        redis_server.stop()
        with pytest.raises(StateUnavailableError) as caught:
            await hidden.store.get("", "s")
    assert why == f"the shared state (Redis at 127.0.0.1:{redis_server.port}) cannot be reached; try again shortly"
    assert "s3cret" not in caught.value.detail


async def test_a_redis_that_stopped_answering_fails_closed_within_its_timeout(redis_server: RedisServer) -> None:
    async with _replica(redis_server.url, redis_timeout=0.3) as state:
        await _append(state, "", "s", 1)
        pid = redis_server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(StateUnavailableError):
                await asyncio.wait_for(state.store.get("", "s"), PATIENCE)
            with pytest.raises(StateUnavailableError):
                await asyncio.wait_for(state.turns.acquire("", "s"), PATIENCE)
            with pytest.raises(StateUnavailableError):
                await asyncio.wait_for(state.concurrency.acquire("k", 1), PATIENCE)
            assert await asyncio.wait_for(state.health.ping(), PATIENCE) is not None
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await state.store.get("", "s") is not None


async def test_a_call_cancelled_at_any_moment_is_cancelled(state: SharedState) -> None:
    # redis-py can lose a cancellation that arrives while it connects (again after each cancelled call).
    for attempt in range(60):

        async def forever() -> None:
            while True:
                await state.store.get("", "s")

        task = asyncio.create_task(forever())
        await asyncio.sleep(0.0001 * (attempt % 20))
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=PATIENCE)
        assert done, f"attempt {attempt}: the cancellation was lost"


async def test_a_redis_restarted_while_nothing_talked_to_it_answers_the_very_next_calls(
    redis_server: RedisServer,
) -> None:
    async with _replica(redis_server.url) as state:
        # Connections opened before the restart, all idle in the pool when Redis goes.
        await asyncio.gather(*(_append(state, "", f"s{n}", n) for n in range(4)))
        redis_server.stop()
        redis_server.start()

        for name, call in _every_member(state).items():
            result = await call()
            if name.endswith("acquire"):
                result.release()  # type: ignore[attr-defined]
        sessions = await asyncio.gather(*(state.store.get("", f"s{n}") for n in range(4)))

    assert sessions == [None] * 4, "an empty Redis (no persistence in the tests)"
