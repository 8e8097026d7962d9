"""The arithmetic of the limits every home keeps alike (:mod:`minato.state.windows`), table by table."""

from __future__ import annotations

import pytest

from minato.state.windows import (
    BUCKET_SECONDS,
    WINDOW_MINUTES,
    Bucket,
    QuotaWindow,
    Standing,
    bucket,
    minute_of,
    oldest_live,
    peek,
    standing,
    take_one,
)

DAY = WINDOW_MINUTES * BUCKET_SECONDS


@pytest.mark.parametrize(
    ("tokens", "last", "now", "per_minute", "expected"),
    [
        (60.0, 0.0, 0.0, 60, (59.0, 0.0)),  # a full bucket gives one
        (0.0, 0.0, 0.0, 60, (0.0, 1.0)),  # an empty one: a second until one is there
        (0.0, 0.0, 0.5, 60, (0.5, 0.5)),  # half refilled: half a second more
        (0.0, 0.0, 1.0, 60, (0.0, 0.0)),  # refilled one exactly, and took it
        (0.0, 0.0, 3600.0, 60, (59.0, 0.0)),  # refills no deeper than per_minute
        (5.0, 10.0, 5.0, 60, (4.0, 0.0)),  # a clock that went back refills nothing
        (0.25, 0.0, 0.0, 3, (0.25, 15.0)),  # 3 a minute: one every 20 s
    ],
)
def test_the_token_bucket(
    tokens: float, last: float, now: float, per_minute: int, expected: tuple[float, float]
) -> None:
    assert take_one(tokens, last, now, per_minute) == expected


def test_a_bucket_lets_per_minute_through_at_once_then_one_each_refill() -> None:
    tokens, last, waits = 3.0, 0.0, []
    for _ in range(4):
        tokens, wait = take_one(tokens, last, 0.0, 3)
        waits.append(wait)
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(20.0)


@pytest.mark.parametrize(
    ("now", "minute"),
    [(0.0, 0), (59.999, 0), (60.0, 1), (1_700_000_000.5, 28_333_333), (-0.5, -1)],
)
def test_the_minute_a_time_counts_in(now: float, minute: int) -> None:
    assert minute_of(now) == minute


def test_a_bucket_counts_for_the_window_after_its_own_minute() -> None:
    assert oldest_live(WINDOW_MINUTES + 7) == 7


#: When minute 5's bucket leaves the window, seen at 400 s.
LAST_GOES = (5 + WINDOW_MINUTES + 1) * 60 - 400.0


@pytest.mark.parametrize(
    ("buckets", "limit", "now", "expected"),
    [
        ([], 10, 0.0, Standing(0.0, 10)),  # nothing counted: the whole quota left
        ([(0, 4)], 10, 30.0, Standing(0.0, 6, (WINDOW_MINUTES + 1) * 60 - 30.0)),  # all gone with minute 0
        # The first bucket's expiry; the window is empty once the last one's is over.
        ([(0, 4), (5, 6)], 10, 400.0, Standing((WINDOW_MINUTES + 1) * 60 - 400.0, 0, LAST_GOES)),
        ([(0, 4), (5, 16)], 10, 400.0, Standing(LAST_GOES, 0, LAST_GOES)),  # both must go
        ([(2, 10)], 10, 120.0, Standing(DAY + 60.0, 0, DAY + 60.0)),  # a day and at most a minute more
    ],
)
def test_where_a_key_stands(buckets: list[tuple[int, int]], limit: int, now: float, expected: Standing) -> None:
    assert standing(buckets, sum(tokens for _, tokens in buckets), limit, now) == expected


def test_a_window_counts_each_minute_once_and_forgets_what_left_it() -> None:
    window = QuotaWindow()
    window.charge(10.0, 3)
    window.charge(50.0, 4)  # the same minute
    window.charge(70.0, 5)

    assert list(window.buckets) == [[0, 7], [1, 5]]
    assert window.standing(70.0, 100) == Standing(0.0, 88, (1 + WINDOW_MINUTES + 1) * 60 - 70.0)
    assert window.standing(70.0, 12)[:2] == ((WINDOW_MINUTES + 1) * 60 - 70.0, 0), "once minute 0 expires"
    assert window.standing((WINDOW_MINUTES + 1) * 60.0, 12)[:2] == (0.0, 7), "minute 0 left the window"
    assert window.standing((WINDOW_MINUTES + 2) * 60.0, 12) == Standing(0.0, 12, 0.0), "and minute 1 after it"
    assert not window.buckets
    assert window.total == 0


@pytest.mark.parametrize(
    ("tokens", "last", "now", "per_minute", "expected"),
    [
        (3.0, 0.0, 0.0, 3, Bucket(0.0, 3, 0.0)),  # full
        (0.5, 0.0, 0.0, 3, Bucket(10.0, 0, 50.0)),  # half a request: 10 s to one, 50 s to full
        (0.5, 0.0, 10.0, 3, Bucket(0.0, 1, 40.0)),  # refilled up to one meanwhile
    ],
)
def test_a_peek_says_where_a_bucket_stands_and_takes_nothing(
    tokens: float, last: float, now: float, per_minute: int, expected: Bucket
) -> None:
    assert peek(tokens, last, now, per_minute) == pytest.approx(expected)


def test_a_bucket_after_a_take_reports_what_is_left_and_when_it_is_full() -> None:
    tokens, wait = take_one(2.0, 0.0, 0.0, 2)

    assert bucket(tokens, wait, 2) == Bucket(0.0, 1, 30.0)
