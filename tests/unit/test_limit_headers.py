"""The limit and timing headers' values: OpenAI's duration format, what a key's bucket and quota say,
and the ``Server-Timing`` entries of a request's record."""

from __future__ import annotations

import pytest

from minato.auth.caller import Caller, Role
from minato.observability.record import RequestRecord
from minato.state.windows import Bucket, Standing
from minato.web.limit_headers import duration, rate_limit_headers, server_timing


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (-3.0, "0s"),
        (0.0004, "0s"),
        (0.02, "20ms"),
        (0.9994, "999ms"),
        (0.9996, "1s"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (17.28, "17.28s"),
        (59.999, "59.999s"),
        (60.0, "1m0s"),
        (360.0, "6m0s"),
        (89.49, "1m29.49s"),
        (3723.0, "1h2m3s"),
        (3600.0, "1h0m0s"),
        (86460.0, "24h1m0s"),
        (86400.25, "24h0m0.25s"),
    ],
)
def test_a_duration_is_written_as_openai_writes_its_resets(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def _caller(requests_per_minute: int = 0, tokens_per_day: int = 0) -> Caller:
    return Caller(
        name="k",
        role=Role.USER,
        fingerprint="f" * 12,
        requests_per_minute=requests_per_minute,
        tokens_per_day=tokens_per_day,
    )


def test_a_key_with_both_limits_gets_all_six_headers() -> None:
    headers = dict(rate_limit_headers(_caller(60, 1000), Bucket(0.0, 57, 3.0), Standing(0.0, 900, 7200.0), 0))

    assert headers == {
        b"x-ratelimit-limit-requests": b"60",
        b"x-ratelimit-remaining-requests": b"57",
        b"x-ratelimit-reset-requests": b"3s",
        b"x-ratelimit-limit-tokens": b"1000",
        b"x-ratelimit-remaining-tokens": b"900",
        b"x-ratelimit-reset-tokens": b"2h0m0s",
    }


def test_a_whole_answer_subtracts_what_it_generated_never_below_zero() -> None:
    caller = _caller(tokens_per_day=1000)

    some = dict(rate_limit_headers(caller, None, Standing(0.0, 900, 60.0), 40))
    over = dict(rate_limit_headers(caller, None, Standing(0.0, 30, 60.0), 40))

    assert some[b"x-ratelimit-remaining-tokens"] == b"860"
    assert some[b"x-ratelimit-reset-tokens"] == b"24h1m0s", "its own tokens leave the window with this minute"
    assert over[b"x-ratelimit-remaining-tokens"] == b"0"


def test_only_the_limits_a_key_has_are_reported() -> None:
    rate_only = dict(rate_limit_headers(_caller(requests_per_minute=5), Bucket(0.0, 4, 12.0), None, 0))
    quota_only = dict(rate_limit_headers(_caller(tokens_per_day=10), None, Standing(0.0, 10), 0))
    neither = rate_limit_headers(_caller(), None, None, 0)

    assert set(rate_only) == {
        b"x-ratelimit-limit-requests",
        b"x-ratelimit-remaining-requests",
        b"x-ratelimit-reset-requests",
    }
    assert set(quota_only) == {
        b"x-ratelimit-limit-tokens",
        b"x-ratelimit-remaining-tokens",
        b"x-ratelimit-reset-tokens",
    }
    assert quota_only[b"x-ratelimit-reset-tokens"] == b"0s", "nothing counted: the quota is whole"
    assert neither == []


def test_a_refused_request_reports_an_empty_bucket() -> None:
    headers = dict(rate_limit_headers(_caller(requests_per_minute=1), Bucket(42.5, 0, 59.5), None, 0))

    assert headers[b"x-ratelimit-remaining-requests"] == b"0"
    assert headers[b"x-ratelimit-reset-requests"] == b"59.5s"


def _record(started: float, queue: float, sent: float | None, ollama: float | None) -> RequestRecord:
    record = RequestRecord("r", started)
    record.queue_seconds = queue
    record.sent = sent
    record.ollama_seconds = ollama
    return record


def test_a_whole_answers_timing_has_its_queue_minatos_time_and_ollamas() -> None:
    record = _record(started=100.0, queue=0.25, sent=100.2625, ollama=0.8125)

    assert server_timing(record, clock=lambda: pytest.fail("the clock is read only for an answer never sent")) == (
        b"queue;dur=250.0, minato;dur=12.5, ollama;dur=812.5"
    )


def test_a_streams_head_has_no_ollama_entry() -> None:
    record = _record(started=10.0, queue=0.0, sent=10.0015, ollama=None)

    assert server_timing(record) == b"queue;dur=0.0, minato;dur=1.5"


def test_an_answer_minato_gave_itself_counts_minatos_time_until_its_head() -> None:
    record = _record(started=5.0, queue=0.5, sent=None, ollama=None)

    assert server_timing(record, clock=lambda: 5.75) == b"queue;dur=500.0, minato;dur=250.0"
