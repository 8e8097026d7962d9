"""Prometheus metrics: one registry per app, fed once per request from its record.

Handlers never touch metrics: they write facts on the request's :class:`~minato.web.middleware.RequestRecord`
(model, tokens, first-token time, upstream failure) and the outermost middleware turns each
finished request into observations, so a metric can never be counted twice or forgotten on an
error path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from minato.observability.record import RequestRecord

LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RATE_BUCKETS: Final = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 200, 500, 1000)
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
#: Methods that get a label of their own; anything else a client invents is ``other``.
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
#: The ``key`` label of requests without a key (a keyless deployment).
ANONYMOUS_KEY: Final = "anonymous"


def _unlabelled(model: str | None) -> str:
    return ""


_Labelled = TypeVar("_Labelled", Counter, Histogram)
_Series = TypeVar("_Series", Counter, Gauge, Histogram)
#: What tells apart the series a finished request feeds: route, method, status, model label, key's name.
_RequestKind = tuple[str, str, int, str, str]


class _RequestSeries:
    """The children one kind of finished request feeds, found with one lookup per request. Each is made
    when a request first needs it: a series that never counted anything is not exposed."""

    __slots__ = ("duration", "first_token", "key_tokens", "requests", "tokens", "tokens_per_second")

    def __init__(self, requests: Counter, duration: Histogram) -> None:
        self.requests = requests
        self.duration = duration
        self.first_token: Histogram | None = None
        self.tokens: Counter | None = None
        self.key_tokens: Counter | None = None
        self.tokens_per_second: Histogram | None = None


class Metrics:
    """Minato's metrics, registered in a registry of their own."""

    def __init__(self) -> None:
        self._children: dict[tuple[Counter | Histogram, tuple[str, ...]], Any] = {}
        self._requests: dict[_RequestKind, _RequestSeries] = {}
        #: Turns a requested model into a bounded label (the model catalog's, once the app runs).
        self.model_label: Callable[[str | None], str] = _unlabelled
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "minato_requests", "HTTP requests answered.", ["route", "method", "status", "model"], registry=r
        )
        self.duration = Histogram(
            "minato_request_duration_seconds",
            "Time from request to the last byte of the response (whole streams included).",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token = Histogram(
            "minato_time_to_first_token_seconds",
            "Time from request to the first token written to the client (streams).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "minato_tokens_generated", "Tokens generated (Ollama's eval_count).", ["model"], registry=r
        )
        self.key_tokens = Counter(
            "minato_key_tokens_generated",
            "Tokens generated (Ollama's eval_count), by model and by the key's name.",
            ["model", "key"],
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "minato_tokens_per_second",
            "Generation speed reported by Ollama.",
            ["model"],
            buckets=RATE_BUCKETS,
            registry=r,
        )
        self.streams_in_flight = Gauge("minato_streams_in_flight", "Streams being relayed now.", registry=r)
        self.upstream_errors = Counter(
            "minato_upstream_errors", "Failures talking to Ollama, by kind.", ["kind"], registry=r
        )
        self.ollama_up = Gauge(
            "minato_ollama_up", "1 if at least one backend answered its last probe, else 0.", registry=r
        )

        # Backends are the configured ones (MINATO_OLLAMA_URL): a bounded label set.
        def per_backend(kind: type[_Series], name: str, documentation: str, **options: Any) -> _Series:
            return kind(name, documentation, ["backend"], registry=r, **options)

        self.backend_up = per_backend(
            Gauge, "minato_backend_up", "1 if the backend is in the pool (answered its last probe), else 0."
        )
        self.backend_in_flight = per_backend(
            Gauge, "minato_backend_generations_in_flight", "Generations running on the backend now."
        )
        self.backend_requests = per_backend(Counter, "minato_backend_requests", "Requests sent to the backend.")
        self.backend_failovers = per_backend(
            Counter,
            "minato_backend_failovers",
            "Requests that failed on the backend before their first byte and were sent to the next one.",
        )
        self.backend_probe = per_backend(
            Histogram,
            "minato_backend_probe_seconds",
            "Time the backend took to answer its probe.",
            buckets=LATENCY_BUCKETS,
        )
        self.redis_up = Gauge(
            "minato_redis_up", "1 if the shared state (Redis) answered its last check, else 0.", registry=r
        )
        self.usage_unwritten = Counter(
            "minato_usage_write_failures",
            "Writes of the usage ledger that failed (the counts are kept and written with the next).",
            registry=r,
        )
        self.queue_depth = Gauge("minato_queue_depth", "Generations waiting for a slot.", registry=r)
        self.rejections = Counter(
            "minato_rejections", "Generations refused by backpressure, by reason.", ["reason"], registry=r
        )
        self.queue_wait = Histogram(
            "minato_queue_wait_seconds",
            "Time generations that found no free slot waited in the queue (granted or refused), by model.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Key names come from the keys file (or fingerprints of configured keys): a bounded set.
        self.queue_waiting = Gauge(
            "minato_queue_waiting", "Generations waiting for a slot, by the key's name.", ["key"], registry=r
        )
        self._waiting: dict[str, Gauge] = {}
        self.keys_reloads = Counter(
            "minato_keys_reloads",
            "Reloads of the keys files: ok (the new keys are in force) or refused (the old ones stay).",
            ["result"],
            registry=r,
        )

    def observe(self, route: str, method: str, status: int, seconds: float, record: RequestRecord) -> None:
        """Account for one finished request; every label comes from a bounded set, never from the request."""
        model = self.model_label(record.model)
        caller = record.caller
        # Names and fingerprints of configured keys only: a bounded set.
        kind = (
            route,
            method if method in METHODS else "other",
            status,
            model,
            caller.name if caller else ANONYMOUS_KEY,
        )
        series = self._requests.get(kind)
        if series is None:
            series = self._requests[kind] = _RequestSeries(
                self._child(self.requests, kind[0], kind[1], str(status), model), self._child(self.duration, route)
            )
        series.requests.inc()
        series.duration.observe(seconds)
        if record.first_token is not None:
            first = series.first_token or self._child(self.first_token, model)
            series.first_token = first
            first.observe(record.first_token)
        if record.tokens:
            tokens = series.tokens or self._child(self.tokens, model)
            key_tokens = series.key_tokens or self._child(self.key_tokens, model, kind[4])
            series.tokens, series.key_tokens = tokens, key_tokens
            tokens.inc(record.tokens)
            key_tokens.inc(record.tokens)
        if record.tokens_per_second:
            speed = series.tokens_per_second or self._child(self.tokens_per_second, model)
            series.tokens_per_second = speed
            speed.observe(record.tokens_per_second)
        if record.upstream_error is not None:
            self._child(self.upstream_errors, record.upstream_error).inc()

    def _child(self, metric: _Labelled, *labels: str) -> _Labelled:
        """``metric.labels(*labels)``, remembered: prometheus_client checks and locks on every lookup,
        which cost more per request than the increments. As bounded as the labels themselves."""
        key = (metric, labels)
        child: _Labelled | None = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def waiting_of(self, key: str) -> Gauge:
        """The ``minato_queue_waiting`` series of the key named ``key``."""
        series = self._waiting.get(key)
        if series is None:
            series = self._waiting[key] = self.queue_waiting.labels(key)
        return series

    def observe_queue_wait(self, model: str, seconds: float) -> None:
        """Account for a generation that waited ``seconds`` for a slot on ``model``."""
        self._child(self.queue_wait, self.model_label(model)).observe(seconds)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
