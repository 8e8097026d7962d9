"""One backend of the pool: its client, its breaker, its inventory, what runs on it, its metric series.

The breaker is a small state machine. Its stored health is ``unknown`` (not probed yet), ``up`` or
``down`` (as the last probe found it); on top of that, ``cooling`` holds from the moment failures in a
row reach the threshold until the cool-down ends. Transitions, each a method of :class:`Breaker`:

* :meth:`~Breaker.failed`: a request failed before anything was relayed; the failure count grows, and
  at the threshold the backend cools (out of routing) for the cool-down;
* :meth:`~Breaker.answered`: a request was answered; the count starts again;
* :meth:`~Breaker.probe_answered` / :meth:`~Breaker.probe_failed`: health ``up`` / ``down``; an answered
  probe after the cool-down ended also starts the count again (the probe is the trial);
* the cool-down ending is time passing: :meth:`~Breaker.state` at a later ``now``.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from minato.observability.metrics import Metrics
    from minato.ollama.wire import TagModel
    from minato.upstream.client import OllamaClient


class State(enum.Enum):
    """What a backend is to routing (the ``state`` ``/ready`` shows)."""

    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"
    COOLING = "cooling"


_HEALTH: Final = {None: State.UNKNOWN, True: State.UP, False: State.DOWN}


class Breaker:
    """A backend's health and failures in a row (see the module's description)."""

    __slots__ = ("cool_until", "cooldown", "failures", "probed", "reason", "threshold", "trips")

    def __init__(self, threshold: int, cooldown: float, *, trips: bool = True) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.trips = trips
        """Whether failures can make it cool at all (a pool of one routes nothing, so never)."""
        self.failures = 0
        self.cool_until = 0.0
        self.probed: bool | None = None
        """Whether it answered its last probe (``None``: not probed yet)."""
        self.reason = ""
        """Why it is not up (the last failure's words)."""

    def state(self, now: float) -> State:
        """Its state at ``now``."""
        if now < self.cool_until:
            return State.COOLING
        return _HEALTH[self.probed]

    def available(self, now: float) -> bool:
        """Whether requests may go to it at ``now``."""
        return self.probed is not False and now >= self.cool_until

    def failed(self, now: float, reason: str) -> bool:
        """A failure before anything was relayed; whether it made the backend start cooling."""
        self.failures += 1
        if self.failures < self.threshold or not self.trips:
            return False
        self.cool_until = now + self.cooldown
        self.reason = reason
        return True

    def answered(self) -> None:
        """A request was answered (also Ollama's "model not found": it is healthy, its inventory was stale)."""
        self.failures = 0

    def probe_answered(self, now: float) -> bool:
        """A probe answered; whether the backend was down before."""
        was_down = self.probed is False
        self.probed, self.reason = True, ""
        if now >= self.cool_until:
            self.failures = 0
        return was_down

    def probe_failed(self, reason: str) -> bool:
        """A probe did not answer; whether the backend was not known to be down before."""
        went_down = self.probed is not False
        self.probed, self.reason = False, reason
        return went_down


class Report:
    """One backend's metric series, labelled once (a label lookup per request would cost more than the routing)."""

    __slots__ = ("failovers", "in_flight", "probe", "requests", "up")

    def __init__(self, metrics: Metrics, name: str) -> None:
        self.up = metrics.backend_up.labels(name)
        self.in_flight = metrics.backend_in_flight.labels(name)
        self.requests = metrics.backend_requests.labels(name)
        self.failovers = metrics.backend_failovers.labels(name)
        self.probe = metrics.backend_probe.labels(name)


def backend_name(url: str) -> str:
    """``host:port`` of a backend's URL: how logs, metrics and answers name it."""
    parsed = urlsplit(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    host = parsed.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}"


class Backend:
    """One Ollama of the pool and what the pool knows of it."""

    __slots__ = (
        "breaker",
        "client",
        "in_flight",
        "installed",
        "loaded",
        "name",
        "refreshing",
        "report",
        "running",
        "tags",
        "version",
    )

    def __init__(self, name: str, client: OllamaClient, breaker: Breaker) -> None:
        self.name = name
        self.client = client
        self.breaker = breaker
        self.installed: dict[str, str] = {}
        """Installed models: canonical name -> the name Ollama lists."""
        self.tags: list[TagModel] = []
        """Its last ``/api/tags`` entries, whole (merged into the pool's list)."""
        self.loaded: set[str] = set()
        """Canonical names of the models loaded in memory."""
        self.in_flight: Counter[str] = Counter()
        """Generations in flight here, per model (canonical name)."""
        self.running = 0
        """Generations in flight here, all models."""
        self.version = ""
        self.refreshing: asyncio.Task[bool] | None = None
        self.report: Report | None = None

    def available(self, now: float) -> bool:
        """Whether requests may go to it now."""
        return self.breaker.available(now)

    def state(self, now: float) -> str:
        """``up``, ``down``, ``cooling`` or ``unknown``."""
        return self.breaker.state(now).value

    def report_up(self, now: float) -> None:
        """Set its ``minato_backend_up``."""
        if self.report is not None:
            self.report.up.set(1 if self.breaker.state(now) in {State.UP, State.UNKNOWN} else 0)

    def started(self, key: str) -> None:
        """A generation of model ``key`` starts here."""
        self.in_flight[key] += 1
        self.running += 1
        if self.report is not None:
            self.report.in_flight.set(self.running)

    def finished(self, key: str) -> None:
        """A generation of model ``key`` ended here."""
        self.in_flight[key] -= 1
        if self.in_flight[key] <= 0:
            del self.in_flight[key]
        self.running -= 1
        if self.report is not None:
            self.report.in_flight.set(self.running)
