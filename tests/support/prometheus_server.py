"""A real Prometheus for the tests: Debian's ``prometheus`` on a free loopback port, its TSDB in a
scratch directory, scraping with a config generated from ``deploy/prometheus.yml``.

``.ci/run`` installs the package when it is missing; without it the test fails and says so (the
dashboard's queries are never left unevaluated).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar

import httpx
import yaml  # type: ignore[import-untyped]

from tests.support.processes import terminate
from tests.support.redis_server import free_port

__all__ = ["PrometheusMissingError", "PrometheusServer", "scrape_config"]

DEPLOYED: Final = Path(__file__).resolve().parents[2] / "deploy" / "prometheus.yml"
DEBIAN_BINARY: Final = Path("/usr/bin/prometheus")
START_TIMEOUT_S: Final = 60.0
STOP_GRACE_S: Final = 10.0
MISSING: Final = (
    "prometheus is not installed: the dashboard test needs Debian's prometheus "
    "(apt-get install prometheus; .ci/run installs it when missing)"
)

T = TypeVar("T")


class PrometheusMissingError(RuntimeError):
    """No ``prometheus`` binary on this machine."""


def prometheus_binary() -> Path:
    """The ``prometheus`` to run: Debian's, else the first on ``PATH``."""
    if DEBIAN_BINARY.exists():
        return DEBIAN_BINARY
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusMissingError(MISSING)
    return Path(found)


def scrape_config(target: str, credentials_file: Path, interval: str = "1s") -> dict[str, Any]:
    """``deploy/prometheus.yml`` pointed at ``target``: its job's settings as they are (path, scheme,
    authorization type, ...), with only the targets, the intervals and the key file's path replaced."""
    deployed: dict[str, Any] = yaml.safe_load(DEPLOYED.read_text())
    [job] = deployed["scrape_configs"]
    assert "authorization" in job, "deploy/prometheus.yml sends no key: /metrics needs one"
    assert "credentials_file" in job["authorization"], "the key comes from a file, never the config"
    local = {
        **job,
        "scrape_interval": interval,
        "static_configs": [{"targets": [target]}],
        "authorization": {**job["authorization"], "credentials_file": str(credentials_file)},
    }
    intervals = {"scrape_interval": interval, "evaluation_interval": interval}
    return {**deployed, "global": {**deployed.get("global", {}), **intervals}, "scrape_configs": [local]}


class PrometheusServer:
    """One ``prometheus`` process on ``127.0.0.1:port`` with ``config``; files in ``directory``."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        self.binary = prometheus_binary()
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = directory / "prometheus.yml"
        self.log_path = directory / "prometheus.log"
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait (bounded) until it says it is ready."""
        argv = [
            str(self.binary),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)  # noqa: S603
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self._process.poll() is None:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus did not become ready on port {self.port}:\n{self.log()[-3000:]}")

    def log(self) -> str:
        """What the process logged (warnings and errors)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL."""
        process, self._process = self._process, None
        terminate(process, STOP_GRACE_S)

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
