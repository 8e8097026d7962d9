"""The usage ledger in each state home: counts per key and model, the rolling 24 h window, the write-behind
(a read sees what is not written yet, a failed write keeps its counts), the same figures for two processes
on one SQLite file or one Redis, and the figures surviving a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection
from pathlib import Path

import pytest

from minato.errors import StateUnavailableError
from minato.observability.metrics import Metrics
from minato.settings import Settings
from minato.state.homes import open_state
from minato.state.redis.home import open_redis_state
from minato.state.redis.link import Link, connect
from minato.state.redis.usage import RedisUsage
from minato.state.sqlite.usage import open_sqlite_usage
from minato.state.usage import Batch, MemoryUsage, Tally, Totals, WriteBehind
from minato.state.windows import BUCKET_SECONDS, WINDOW_MINUTES
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

DAY = WINDOW_MINUTES * BUCKET_SECONDS
#: A moment on a minute's boundary, so "a minute later" is the next bucket.
T0 = 1_800_000_000.0 - 1_800_000_000.0 % BUCKET_SECONDS


class Clock:
    """A wall clock the test moves."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- memory --------------------------------------------------------------------------------------


async def test_memory_counts_per_key_and_model_and_only_the_keys_asked_for() -> None:
    ledger = MemoryUsage(Clock())
    ledger.count("alice", "llama3.2:latest", 10, 5)
    ledger.count("alice", "llama3.2:latest", 1, 2)
    ledger.count("alice", "qwen3:latest", 0, 0)
    ledger.count("bob", "llama3.2:latest", 3, 3)

    found = await ledger.totals({"alice", "carol"})

    assert found == {"alice": {"llama3.2:latest": Tally(2, 11, 7), "qwen3:latest": Tally(1, 0, 0)}}


async def test_memory_minutes_leave_the_window_after_24_hours() -> None:
    clock = Clock()
    ledger = MemoryUsage(clock)
    ledger.count("alice", "m", 1, 1)
    clock.now += 60
    ledger.count("alice", "m", 2, 2)

    clock.now = T0 + DAY + 59  # the first minute is still counted (24 h and at most a minute more)
    kept = await ledger.totals({"alice"})
    clock.now = T0 + DAY + 60
    first_gone = await ledger.totals({"alice"})
    clock.now = T0 + DAY + 120
    all_gone = await ledger.totals({"alice"})

    assert kept == {"alice": {"m": Tally(2, 3, 3)}}
    assert first_gone == {"alice": {"m": Tally(1, 2, 2)}}
    assert all_gone == {}


# -- the write-behind ----------------------------------------------------------------------------


class FlakySink:
    """A sink that fails while ``down``, else keeps what it is given."""

    def __init__(self) -> None:
        self.down = False
        self.kept: Totals = {}
        self.writes = 0
        self.written = asyncio.Event()

    async def add(self, batch: Batch) -> None:
        self.writes += 1
        if self.down:
            raise StateUnavailableError("the sink is down")
        for (key, model), tally in batch.items():
            models = self.kept.setdefault(key, {})
            models[model] = models.get(model, Tally()).plus(tally)
        self.written.set()

    async def totals(self, keys: Collection[str]) -> Totals:
        if self.down:
            raise StateUnavailableError("the sink is down")
        return {key: dict(models) for key, models in self.kept.items() if key in keys}


async def test_a_read_adds_what_is_not_written_yet_and_a_flush_writes_it_once() -> None:
    sink = FlakySink()
    ledger = WriteBehind(sink, interval=3600)
    ledger.count("alice", "m", 4, 6)

    before = await ledger.totals({"alice"})
    await ledger.flush()
    after = await ledger.totals({"alice"})
    await ledger.close()

    assert before == after == {"alice": {"m": Tally(1, 4, 6)}}
    assert sink.kept == {"alice": {"m": Tally(1, 4, 6)}}
    assert sink.writes == 1, "nothing left to write at close"


async def test_a_failed_write_keeps_its_counts_for_the_next_and_is_counted() -> None:
    sink = FlakySink()
    failures: list[None] = []
    ledger = WriteBehind(sink, interval=3600, failed=lambda: failures.append(None))
    ledger.count("alice", "m", 1, 1)
    sink.down = True

    await ledger.flush()
    ledger.count("alice", "m", 2, 2)
    sink.down = False
    await ledger.close()

    assert len(failures) == 1
    assert sink.kept == {"alice": {"m": Tally(2, 3, 3)}}


async def test_a_read_the_home_cannot_answer_is_state_unavailable() -> None:
    sink = FlakySink()
    ledger = WriteBehind(sink, interval=3600)
    sink.down = True

    with pytest.raises(StateUnavailableError):
        await ledger.totals({"alice"})


async def test_the_writer_writes_by_itself() -> None:
    sink = FlakySink()
    ledger = WriteBehind(sink, interval=0.01)
    ledger.count("alice", "m", 1, 1)
    try:
        async with asyncio.timeout(10):
            await sink.written.wait()
    finally:
        await ledger.close()

    assert sink.kept == {"alice": {"m": Tally(1, 1, 1)}}


# -- SQLite --------------------------------------------------------------------------------------


async def test_two_processes_on_one_sqlite_file_report_the_same(tmp_path: Path) -> None:
    path = tmp_path / "minato.db"
    clock = Clock()
    async with open_sqlite_usage(path, clock=clock) as one, open_sqlite_usage(path, clock=clock) as two:
        one.count("alice", "m", 5, 7)
        two.count("alice", "m", 1, 1)
        two.count("bob", "n", 0, 3)
        await one.flush()
        await two.flush()

        seen_by_one = await one.totals({"alice", "bob"})
        seen_by_two = await two.totals({"alice", "bob"})

    assert seen_by_one == seen_by_two == {"alice": {"m": Tally(2, 6, 8)}, "bob": {"n": Tally(1, 0, 3)}}


async def test_sqlite_keeps_what_was_counted_when_it_closes_and_forgets_it_after_24_hours(tmp_path: Path) -> None:
    path = tmp_path / "minato.db"
    clock = Clock()
    async with open_sqlite_usage(path, clock=clock) as ledger:
        ledger.count("alice", "m", 5, 7)  # not flushed: written when the ledger closes
    async with open_sqlite_usage(path, clock=clock) as reopened:
        after_restart = await reopened.totals({"alice"})
        clock.now += 60
        reopened.count("alice", "m", 1, 1)
        await reopened.flush()
        clock.now = T0 + DAY + 60
        a_day_later = await reopened.totals({"alice"})
        reopened.count("bob", "m", 1, 1)
        await reopened.flush()  # sweeps the minutes out of the window
        clock.now = T0  # looking back: the swept rows are gone from the file, not just out of the sum
        swept = await reopened.totals({"alice"})

    assert after_restart == {"alice": {"m": Tally(1, 5, 7)}}
    assert a_day_later == {"alice": {"m": Tally(1, 1, 1)}}
    assert swept == {"alice": {"m": Tally(1, 1, 1)}}


async def test_a_single_worker_on_a_sqlite_store_keeps_its_usage_in_the_file(tmp_path: Path) -> None:
    settings = Settings(session_store=str(tmp_path / "minato.db"), workers=1)
    async with open_state(settings, Metrics()) as state:
        state.usage.count("alice", "m", 2, 3)
    async with open_state(settings, Metrics()) as state:
        found = await state.usage.totals({"alice"})

    assert found == {"alice": {"m": Tally(1, 2, 3)}}


async def test_two_workers_on_a_sqlite_store_share_their_usage(tmp_path: Path) -> None:
    settings = Settings(session_store=str(tmp_path / "minato.db"), workers=2)
    async with open_state(settings, Metrics()) as one, open_state(settings, Metrics()) as two:
        one.usage.count("alice", "m", 2, 3)
        await one.usage.close()  # what the worker counted, written (as every second)
        seen_by_two = await two.usage.totals({"alice"})

    assert seen_by_two == {"alice": {"m": Tally(1, 2, 3)}}


async def test_memory_conversations_keep_usage_in_memory() -> None:
    async with open_state(Settings(session_store="memory://"), Metrics()) as state:
        assert isinstance(state.usage, MemoryUsage)


# -- Redis ---------------------------------------------------------------------------------------


@pytest.fixture(name="link")
async def fx_link(redis_url: str) -> AsyncIterator[Link]:
    settings = Settings(redis_url=redis_url, redis_timeout=0.5)
    client = connect(settings)
    yield Link(client, settings, Metrics())
    await client.aclose()


async def test_two_replicas_on_one_redis_report_the_same(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, redis_timeout=0.5, session_store="memory://")
    async with open_redis_state(settings, Metrics()) as one, open_redis_state(settings, Metrics()) as two:
        one.usage.count("alice", "llama3.2:latest", 5, 7)
        two.usage.count("alice", "llama3.2:latest", 1, 1)
        two.usage.count("a:b", "x/y:1b", 2, 2)  # colons in names and models stay apart
        seen_before_any_write = await one.usage.totals({"alice"})
        await one.usage.close()
        await two.usage.close()

        seen_by_one = await one.usage.totals({"alice", "a:b", "carol"})
        seen_by_two = await two.usage.totals({"alice", "a:b", "carol"})

    assert seen_before_any_write == {"alice": {"llama3.2:latest": Tally(1, 5, 7)}}, "its own, not written yet"
    expected = {"alice": {"llama3.2:latest": Tally(2, 6, 8)}, "a:b": {"x/y:1b": Tally(1, 2, 2)}}
    assert seen_by_one == seen_by_two == expected


async def test_redis_minutes_leave_the_window_after_24_hours(link: Link, redis_url: str) -> None:
    now = time.time()
    start = now - now % BUCKET_SECONDS
    at = RedisUsage(link, now=repr(start))
    await at.add({("alice", "m"): Tally(1, 1, 1)})
    await RedisUsage(link, now=repr(start + 60)).add({("alice", "m"): Tally(1, 2, 2)})

    kept = await RedisUsage(link, now=repr(start + DAY + 59)).totals({"alice"})
    first_gone = await RedisUsage(link, now=repr(start + DAY + 60)).totals({"alice"})
    all_gone = await RedisUsage(link, now=repr(start + DAY + 120)).totals({"alice"})

    assert kept == {"alice": {"m": Tally(2, 3, 3)}}
    assert first_gone == {"alice": {"m": Tally(1, 2, 2)}}
    assert all_gone == {}


async def test_redis_hashes_expire_once_their_minutes_have_left_the_window(link: Link) -> None:
    await RedisUsage(link).add({("alice", "m"): Tally(1, 1, 1)})

    [name] = [key async for key in link.client.scan_iter(match="minato:usage:alice:*")]
    ttl = await link.client.ttl(name)

    assert DAY < ttl <= DAY + 2 * 3600


async def test_a_redis_that_is_away_fails_a_read_and_keeps_the_counts(redis_server: RedisServer) -> None:
    settings = Settings(redis_url=redis_server.url, redis_timeout=0.5, session_store="memory://")
    metrics = Metrics()
    async with open_redis_state(settings, metrics) as state:
        usage = state.usage
        assert isinstance(usage, WriteBehind)
        usage.count("alice", "m", 1, 1)
        redis_server.stop()
        await usage.flush()
        with pytest.raises(StateUnavailableError):
            await usage.totals({"alice"})
        redis_server.start()
        await usage.flush()
        found = await usage.totals({"alice"})

    assert found == {"alice": {"m": Tally(1, 1, 1)}}
    assert metrics.registry.get_sample_value("minato_usage_write_failures_total") == 1


class SlowSink(FlakySink):
    """A sink whose writes wait until the test lets them finish."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = asyncio.Event()
        self.finish = asyncio.Event()

    async def add(self, batch: Batch) -> None:
        self.writing.set()
        await self.finish.wait()
        await super().add(batch)


async def test_closing_while_the_writer_writes_lets_the_write_finish_and_counts_it_once() -> None:
    sink = SlowSink()
    ledger = WriteBehind(sink, interval=0.01)
    ledger.count("alice", "m", 1, 1)
    async with asyncio.timeout(10):
        await sink.writing.wait()
    ledger.count("alice", "m", 2, 2)  # counted while the first batch is being written

    closing = asyncio.create_task(ledger.close())
    await asyncio.sleep(0)  # close() now waits for the write in flight
    sink.finish.set()
    async with asyncio.timeout(10):
        await closing

    assert sink.kept == {"alice": {"m": Tally(2, 3, 3)}}
    assert sink.writes == 2
