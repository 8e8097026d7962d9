"""Minato as a real process, tried as an attacker and as a newcomer would: keys, labels, queued
uploads, typos, timeouts, images in a conversation and browsers reconnecting."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import pytest

from tests.support.payloads import PNG_1PX
from tests.support.servers import start_minato, stop_minato

pytestmark = pytest.mark.e2e


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- resource exhaustion ----------------------------------------------------------------------------


@pytest.mark.load  # measures Minato's memory while 96 MiB of uploads queue
def test_uploads_queued_behind_a_busy_slot_wait_outside_minatos_memory(
    standin_url: str, standin: httpx.Client, tmp_path: Path
) -> None:
    server = start_minato(standin_url, tmp_path / "queued.log", max_generations="1", queue_timeout="60")
    image = PNG_1PX + b"\x00" * (2 * 1024 * 1024 - len(PNG_1PX))  # 2 MiB that sniff as PNG
    holding = httpx.Client(base_url=server.url, timeout=30)
    try:
        # One slow stream holds the only generation slot.
        with holding.stream("GET", "/stream/standin/paced:400x25", params={"message": "hold"}) as held:
            assert held.status_code == 200
            chunks = held.iter_bytes()  # kept: a dropped iterator would close the stream
            next(chunks)
            baseline = _rss_kib(server.process.pid)

            def upload(index: int) -> int:
                files = [("images", (f"{index}-{n}.png", image, "image/png")) for n in range(8)]
                with httpx.Client(base_url=server.url, timeout=60) as client:
                    return client.post("/vision/llava:7b", params={"message": "What is it?"}, files=files).status_code

            with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
                futures = [pool.submit(upload, index) for index in range(6)]
                peak = baseline
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:
                    peak = max(peak, _rss_kib(server.process.pid))
                    time.sleep(0.05)
                held.close()  # the slot frees up: the uploads go through one at a time
                statuses = [future.result(timeout=60) for future in futures]
        assert statuses == [200] * 6
        added_mib = (peak - baseline) / 1024
        assert added_mib < 60, f"six queued 8 x 2 MiB uploads added {added_mib:.1f} MiB"
    finally:
        holding.close()
        stop_minato(server)
