"""The benchmark's own arithmetic: py-spy summaries, stream overlap, nginx's generated config, the requests
and the verdicts of issue #23's rows."""

from __future__ import annotations

import re
from pathlib import Path

import httptools
import msgspec
from bench.common import AUTH, MB, Tally
from bench.concurrency import peak_streaming
from bench.features import VARIANTS, Variant, _ab_rows, _Leg
from bench.load import Result, Sample
from bench.processes import NGINX_CONF, Server
from bench.profile import EVENT_LOOP, Run, _owner, _parse, _summary
from bench.references import NGINX_LABEL, Subject, _paced_table, _whole16_table
from bench.slow_reader import SlowRead, _rows, _Seen

ROOT = "<module> (minato/__main__.py:4);run (uvicorn/main.py:580);Runner.run (asyncio/runners.py:118)"


def _result(first_body: float, finished: float) -> Result:
    return Result(started=0.0, first_body=first_body, finished=finished, status=200, body_bytes=1)


def test_parse_reads_collapsed_stacks_and_adds_repeats() -> None:
    raw = f"{ROOT};a (x.py:1) 3\n{ROOT};a (x.py:1) 2\n{ROOT};b (y.py:2) 1\nnot a stack line\n"
    stacks = _parse(raw)
    assert stacks[(*ROOT.split(";"), "a (x.py:1)")] == 5
    assert sum(stacks.values()) == 6


def test_parse_leaves_out_a_thread_pool_worker_waiting_for_work() -> None:
    waiting = "_bootstrap (threading.py:995);_worker (concurrent/futures/thread.py:81)"
    working = "_bootstrap (threading.py:995);_worker (concurrent/futures/thread.py:83);run (x.py:1)"
    stacks = _parse(f"{waiting} 7\n{working} 2\n")
    assert sum(stacks.values()) == 2, "a worker blocked on its queue is idle, not CPU"


def test_owner_is_the_innermost_minato_file_with_the_libraries_it_calls() -> None:
    stack = ("serve_http (minato/web/middleware.py:150)", "check (minato/web/auth.py:166)", "compare (hmac.py:3)")
    assert _owner(stack) == "minato/web/auth.py"


def test_owner_is_the_framework_when_it_sits_between_minato_and_the_sample() -> None:
    stack = ("serve_http (minato/web/middleware.py:150)", "handle (litestar/routes/http.py:80)", "parse (msgspec.py:1)")
    assert _owner(stack) == "litestar (around Minato's code)"


def test_owner_names_the_file_of_a_callback_outside_any_minato_frame() -> None:
    assert _owner(("data_received (aiohttp/client_proto.py:359)",)) == (
        "outside any Minato frame: aiohttp/client_proto.py"
    )


def test_summary_leaves_out_the_launch_frames_and_names_time_in_the_loop_itself() -> None:
    run = Run("whole answers", units=10, cpu_s=0.01)  # 1,000 µs per request
    run.stacks = _parse(f"{ROOT} 1\n{ROOT};handle (minato/web/api/generate.py:40) 3\n")
    summary = _summary(run)
    assert "serve (minato/server/cli.py)" not in summary
    assert "<module>" not in summary
    assert re.search(r"25\.0 %\s+250\.0 µs/request  " + re.escape(EVENT_LOOP), summary)
    assert re.search(r"75\.0 %\s+750\.0 µs/request  minato/web/api/generate.py", summary)


def test_summary_of_a_run_without_samples_says_why() -> None:
    assert "py-spy not found" in _summary(Run("x", error="py-spy not found"))


def test_peak_streaming_counts_streams_between_first_token_and_end() -> None:
    overlapping = [_result(0.0, 2.0), _result(1.0, 3.0), _result(1.5, 2.5)]
    assert peak_streaming(overlapping) == 3
    one_after_another = [_result(0.0, 1.0), _result(1.0, 2.0), _result(2.0, 3.0)]
    assert peak_streaming(one_after_another) == 1


def test_nginx_config_writes_only_inside_its_own_directory(tmp_path: Path) -> None:
    tmp = str(tmp_path)
    conf = NGINX_CONF.format(tmp=tmp, port=1, upstream=2, connections=3)
    written = re.findall(r"^\s*(pid|error_log|\w+_temp_path|access_log)\s+(\S+)", conf, re.MULTILINE)
    assert {name for name, _ in written} >= {"pid", "error_log", "proxy_temp_path", "client_body_temp_path"}
    assert all(Path(where).is_relative_to(tmp) for name, where in written if name != "access_log")
    assert ("access_log", "off;") in written
    assert "proxy_buffering off;" in conf


class Parsed:
    """One HTTP request as httptools reads it."""

    def __init__(self, raw: bytes) -> None:
        self.url, self.body, self.complete = b"", b"", False
        self.headers: dict[bytes, bytes] = {}
        httptools.HttpRequestParser(self).feed_data(raw)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def test_minatos_paced_requests_carry_its_key_in_a_well_formed_head() -> None:
    for route, path in (("stream", b"/stream/m?message=hi"), ("chat", b"/api/chat"), ("v1", b"/v1/chat/completions")):
        parsed = Parsed(Subject("Minato", 1, 2, route, minato=True).request("m"))
        assert (parsed.url, parsed.complete) == (path, True)
        assert parsed.headers[b"authorization"] == AUTH["Authorization"].encode()
        if route != "stream":
            assert msgspec.json.decode(parsed.body)["stream"] is True
    assert b"authorization" not in Parsed(Subject("nginx", 1, 2, "chat").request("m")).headers


def _tally(rate: float) -> Tally:
    tally = Tally()
    tally.add(Sample(results=[_result(0.0, 1.0)] * 10, elapsed=10 / rate), cpu_s=0.01)
    return tally


def test_whole16_holds_minato_to_the_floor_and_the_bare_relay() -> None:
    direct = Sample(results=[_result(0.0, 0.001)], elapsed=1.0)
    rows = _whole16_table(
        "s", {"Minato": _tally(900), "floor relay": _tally(1000), "bare relay": _tally(950)}, direct, 10
    )
    verdicts = {row.metric: row.passed for row in rows if row.passed is not None}
    assert verdicts == {"Minato / floor relay requests/s": True, "Minato / bare relay requests/s": False}
    rows = _whole16_table(
        "s", {"Minato": _tally(700), "floor relay": _tally(1000), "bare relay": _tally(600)}, direct, 10
    )
    verdicts = {row.metric: row.passed for row in rows if row.passed is not None}
    assert verdicts == {"Minato / floor relay requests/s": False, "Minato / bare relay requests/s": True}


def test_slow_reader_holds_minato_to_its_growth_and_to_the_pause_reaching_ollama() -> None:
    direct = SlowRead(200, 10 * MB, 1.0)
    paused = _Seen(SlowRead(200, 10 * MB, 10.0), 80 * MB, 81 * MB, 200_000, 0.8)
    verdicts = {
        row.metric: row.passed for row in _rows("s", "Minato", paused, direct, held=True) if row.passed is not None
    }
    assert set(verdicts.values()) == {True}
    buffered = _Seen(SlowRead(200, 10 * MB, 10.0), 80 * MB, 92 * MB, 0, 0.0)
    failed = [row.metric for row in _rows("s", "Minato", buffered, direct, held=True) if row.passed is False]
    assert len(failed) == 2
    cut = _Seen(None, 80 * MB, 80 * MB, 100_000, 0.5)
    assert [row.metric for row in _rows("s", "Minato", cut, direct, held=True) if row.passed is False] == [
        "Minato: answer incomplete"
    ]
    assert all(row.passed is None for row in _rows("s", "floor relay", buffered, direct, held=False))


def test_a_feature_costs_the_median_of_its_rounds_over_its_reference() -> None:
    def leg(variant: Variant, cpu_us: list[float]) -> _Leg:
        return _Leg(variant, Server(1, 1, Path()), cpu_us)

    legs = [
        leg(VARIANTS[0], [100.0, 110.0, 90.0]),
        leg(Variant("key", "baseline"), [110.0, 130.0, 95.0]),
        leg(Variant("rate limit", "key"), [115.0, 131.0, 105.0]),
    ]
    added = {row.metric: row.minato for row in _ab_rows("s", legs)}
    assert added == {
        "baseline: CPU per request": 100.0,
        "key: µs per request over baseline": 10.0,
        "rate limit: µs per request over key": 5.0,
    }


def test_paced_rows_hold_minato_to_nginx_and_direct_and_show_each_servers_peak_rss() -> None:
    def tally(cpu_s: float, finished: float, rss_mb: int) -> Tally:
        done = Tally(peak_rss=rss_mb * MB)
        done.add(Sample(results=[_result(0.1, finished)] * 100, elapsed=finished), cpu_s)  # 10,000 tokens
        return done

    subjects = [
        Subject("direct", 1, None, "chat"),
        Subject(NGINX_LABEL, 2, 20, "chat"),
        Subject("floor relay GET /stream", 3, 30, "stream"),
        Subject("Minato GET /stream", 4, 40, "stream", minato=True),
        Subject("Minato POST /api/chat", 4, 40, "chat", minato=True),
    ]
    tallies = {
        "direct": tally(0.0, 2.0, 0),
        NGINX_LABEL: tally(0.2, 2.0, 7),  # 20 µs a token
        "floor relay GET /stream": tally(0.5, 2.0, 30),
        "Minato GET /stream": tally(0.23, 2.1, 80),  # 1.15x nginx, p99 1.05x direct
        "Minato POST /api/chat": tally(0.3, 2.4, 90),  # 1.5x nginx, p99 1.2x direct
    }
    rows = {row.metric: row for row in _paced_table("s", subjects, tallies)}
    assert rows["Minato GET /stream: CPU per token / nginx's"].passed is True
    assert rows["Minato GET /stream: p99 completion"].passed is True
    assert rows["Minato POST /api/chat: CPU per token / nginx's"].passed is False
    assert rows["Minato POST /api/chat: p99 completion"].passed is False
    assert rows["floor relay GET /stream: CPU per token / nginx's"].passed is None
    peaks = {metric: row.minato for metric, row in rows.items() if metric.endswith("peak RSS")}
    assert peaks == {"nginx: peak RSS": 7, "floor relay: peak RSS": 30, "Minato: peak RSS": 90}
