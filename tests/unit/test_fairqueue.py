"""Whose turn it is (the fair queue on its own), who may see the queue (the policy), and the
in-process home of the per-key bound when a cancel races a give-back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from minato.auth.caller import ANONYMOUS, Caller, Role
from minato.core.fairqueue import FairQueue, Waiter
from minato.core.policy import Policy
from minato.errors import ForbiddenError
from minato.settings import Settings
from minato.state.concurrency import LocalKeyConcurrency
from tests.support.callers import A, B, C, key
from tests.support.waiting import settled

pytestmark = pytest.mark.anyio


class Tags:
    """A fair queue driven directly: push requests, pop them in the order it serves them."""

    def __init__(self) -> None:
        self.queue = FairQueue()
        self.loop = asyncio.new_event_loop()
        self.seq = 0

    def push(self, caller: Caller) -> None:
        self.seq += 1
        waiter = Waiter("m", caller, None, 0.0, self.seq)
        waiter.future = self.loop.create_future()
        self.queue.push(waiter)

    def pop(self) -> str:
        waiter = self.queue.pop_next(lambda _: True)
        assert waiter is not None
        return waiter.caller.name[0]


@pytest.fixture
def tags() -> Iterator[Tags]:
    driven = Tags()
    yield driven
    driven.loop.close()


def test_a_key_that_left_and_came_back_gets_no_extra_turn(tags: Tags) -> None:
    for caller in (A, A, A, B):
        tags.push(caller)
    assert [tags.pop(), tags.pop()] == ["a", "b"]
    # bob had his turn and left; coming straight back, he is behind alice's waiting request.
    tags.push(B)

    assert "".join(tags.pop() for _ in range(3)) == "aba"
    assert tags.queue.size == 0


def test_idle_time_banks_no_credit(tags: Tags) -> None:
    for _ in range(6):
        tags.push(A)
    for _ in range(4):
        assert tags.pop() == "a"
    # bob waited for nothing while alice was served alone: he starts at the clock (the tag of alice's
    # last turn), so he gets the next turn and then his share, not a backlog of the four he missed.
    for _ in range(3):
        tags.push(B)

    assert "".join(tags.pop() for _ in range(5)) == "babab"


def test_the_order_reported_is_the_order_served(tags: Tags) -> None:
    heavy = key("heavy", weight=3)
    for caller in (heavy, heavy, heavy, heavy, B, B, C):
        tags.push(caller)
    reported = [w.caller.name[0] for w in tags.queue.in_order()]

    assert reported == [tags.pop() for _ in range(7)]
    assert reported == ["h", "b", "c", "h", "h", "h", "b"]


async def test_the_in_process_key_bound_survives_a_cancel_racing_a_give_back() -> None:
    bound = LocalKeyConcurrency()
    held = await bound.acquire("k", 1)
    first = asyncio.ensure_future(bound.acquire("k", 1))
    second = asyncio.ensure_future(bound.acquire("k", 1))
    await settled(lambda: len(bound._waiting.get("k", ())) == 2, "both wait")

    first.cancel()  # its future is cancelled now, but it cleans up only when it next runs...
    held.release()  # ...and the give-back passes over it, to the second
    await asyncio.gather(first, return_exceptions=True)
    place = await asyncio.wait_for(second, 5)

    assert await bound.running("k") == 1
    place.release()
    assert await bound.running("k") == 0
    assert not bound._waiting


@pytest.mark.parametrize(
    ("caller", "asked", "sees"),
    [
        (Caller(fingerprint="f" * 12, role=Role.ADMIN, name="root"), None, "every key"),
        (Caller(fingerprint="f" * 12, role=Role.ADMIN, name="root"), "alice", "every key"),
        (A, None, "itself"),
        (A, "alice", "itself"),
        (ANONYMOUS, None, "every key"),
    ],
)
def test_the_policy_says_whose_queue_entries_a_caller_sees(caller: Caller, asked: str | None, sees: str) -> None:
    scope = Policy(Settings()).queue_scope(caller, asked)

    assert (scope is None) == (sees == "every key")
    assert scope in (None, caller)


@pytest.mark.parametrize(
    ("caller", "asked"),
    [(A, "bob"), (A, "mallory"), (Caller(fingerprint="e" * 12, role=Role.METRICS, name="scraper"), None)],
)
def test_the_policy_refuses_another_keys_queue_to_a_user_and_any_to_a_metrics_key(
    caller: Caller, asked: str | None
) -> None:
    with pytest.raises(ForbiddenError):
        Policy(Settings()).queue_scope(caller, asked)
