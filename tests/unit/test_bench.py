"""The benchmark's own arithmetic: py-spy summaries, stream overlap, nginx's generated config."""

from __future__ import annotations

import re
from pathlib import Path

from bench.concurrency import peak_streaming
from bench.load import Result
from bench.processes import NGINX_CONF
from bench.profile import EVENT_LOOP, Run, _owner, _parse, _summary

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
