"""Routing as a table: which backends a request may go to, best first, from their state and inventory
alone (no app, no server, no clock but the one each case names)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
from structlog.testing import capture_logs

from minato.errors import StateUnavailableError
from minato.upstream.pool.backend import Breaker
from minato.upstream.pool.routing import Sticky, preferring, route

M = "llama3.2:latest"
NOW = 1000.0
PARALLEL = 2


@dataclass
class Node:
    """A backend as routing sees it: a name, a breaker, what it has and what runs on it."""

    name: str
    installed: dict[str, str] = field(default_factory=dict)
    loaded: set[str] = field(default_factory=set)
    in_flight: Counter[str] = field(default_factory=Counter)
    running: int = 0
    breaker: Breaker = field(default_factory=lambda: _breaker(probed=True))

    def available(self, now: float) -> bool:
        return self.breaker.available(now)


def _breaker(*, probed: bool | None, cool_until: float = 0.0) -> Breaker:
    breaker = Breaker(threshold=2, cooldown=60.0)
    breaker.probed = probed
    breaker.cool_until = cool_until
    return breaker


def node(
    name: str,
    *,
    has: bool = True,
    loaded: bool = False,
    busy: int = 0,
    running: int | None = None,
    probed: bool | None = True,
    cool_until: float = 0.0,
) -> Node:
    """A backend holding M (``has``), perhaps loaded, with ``busy`` generations of M in flight."""
    return Node(
        name,
        installed={M: M} if has else {},
        loaded={M} if loaded else set(),
        in_flight=Counter({M: busy}) if busy else Counter(),
        running=busy if running is None else running,
        breaker=_breaker(probed=probed, cool_until=cool_until),
    )


CASES: list[tuple[str, list[Node], str | None, list[str]]] = [
    ("only the backends whose tags list the model", [node("a", has=False), node("b"), node("c", has=False)], M, ["b"]),
    (
        "loaded (per /api/ps) but not installed is no candidate",
        [Node("a", loaded={M}), node("b")],
        M,
        ["b"],
    ),
    ("loaded before only installed", [node("a"), node("b", loaded=True), node("c")], M, ["b", "a", "c"]),
    (
        "among loaded ones, fewest of M in flight first",
        [node("a", loaded=True, busy=1), node("b", loaded=True, busy=0)],
        M,
        ["b", "a"],
    ),
    (
        "among installed ones, fewest generations of any model first",
        [node("a", running=3), node("b", running=1), node("c", running=2)],
        M,
        ["b", "c", "a"],
    ),
    (
        "a loaded one running its share comes after the installed ones",
        [node("a", loaded=True, busy=PARALLEL), node("b"), node("c", loaded=True, busy=1)],
        M,
        ["c", "b", "a"],
    ),
    (
        "full ones among themselves: fewest in flight first",
        [node("a", loaded=True, busy=PARALLEL + 2), node("b", loaded=True, busy=PARALLEL)],
        M,
        ["b", "a"],
    ),
    ("a down backend is skipped", [node("a", loaded=True, probed=False), node("b")], M, ["b"]),
    ("a cooling backend is skipped", [node("a", loaded=True, cool_until=NOW + 1), node("b")], M, ["b"]),
    ("once its cool-down ended it is back", [node("a", loaded=True, cool_until=NOW), node("b")], M, ["a", "b"]),
    ("a backend not probed yet may be asked", [node("a", loaded=True, probed=None)], M, ["a"]),
    ("nobody available: nothing", [node("a", probed=False), node("b", cool_until=NOW + 5)], M, []),
    ("nobody has the model: nothing", [node("a", has=False), node("b", has=False)], M, []),
    (
        "no model: every available backend in configured order",
        [node("a", has=False), node("b", probed=False), node("c", loaded=True, busy=5)],
        None,
        ["a", "c"],
    ),
]


@pytest.mark.parametrize(("backends", "key", "expected"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_route(backends: list[Node], key: str | None, expected: list[str]) -> None:
    assert [b.name for b in route(backends, key, NOW, PARALLEL, turn=0)] == expected


def test_equally_good_backends_take_turns() -> None:
    backends = [node("a", loaded=True), node("b", loaded=True), node("c", loaded=True)]
    firsts = [route(backends, M, NOW, PARALLEL, turn)[0].name for turn in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]


def test_a_turn_rotates_only_equals_never_past_a_better_backend() -> None:
    backends = [node("a"), node("b", loaded=True), node("c")]
    assert {route(backends, M, NOW, PARALLEL, turn)[0].name for turn in range(3)} == {"b"}


def test_no_model_is_never_rotated() -> None:
    backends = [node("a"), node("b"), node("c")]
    assert {tuple(b.name for b in route(backends, None, NOW, PARALLEL, turn)) for turn in range(3)} == {("a", "b", "c")}


STICKY: list[tuple[str, list[Node], str | None, list[str]]] = [
    (
        "kept while warm, though another is less busy",
        [node("a", loaded=True, busy=0), node("b", loaded=True, busy=1)],
        "b",
        ["b", "a"],
    ),
    ("kept though only installed there", [node("a", loaded=True), node("b")], "b", ["b", "a"]),
    ("kept though it runs its share", [node("a"), node("b", loaded=True, busy=PARALLEL)], "b", ["b", "a"]),
    ("dropped when that backend is down", [node("a"), node("b", loaded=True, probed=False)], "b", ["a"]),
    ("dropped while it cools", [node("a"), node("b", cool_until=NOW + 1)], "b", ["a"]),
    ("dropped when it lost the model", [node("a"), node("b", has=False, loaded=True)], "b", ["a"]),
    ("a backend the pool does not have changes nothing", [node("a"), node("b", loaded=True)], "z:1", ["b", "a"]),
    ("no conversation changes nothing", [node("a"), node("b", loaded=True)], None, ["b", "a"]),
]


@pytest.mark.parametrize(
    ("backends", "preferred", "expected"), [case[1:] for case in STICKY], ids=[c[0] for c in STICKY]
)
def test_affinity_wraps_routing(backends: list[Node], preferred: str | None, expected: list[str]) -> None:
    ordered = preferring(route(backends, M, NOW, PARALLEL, turn=0), preferred)
    assert [b.name for b in ordered] == expected


class Store:
    """An affinity store in memory that can be made to fail."""

    def __init__(self, *, failing: bool = False) -> None:
        self.kept: dict[str, str] = {}
        self.puts = 0
        self.failing = failing

    async def get(self, key: str) -> str | None:
        if self.failing:
            raise StateUnavailableError("the store is down")
        return self.kept.get(key)

    async def put(self, key: str, backend: str) -> None:
        if self.failing:
            raise StateUnavailableError("the store is down")
        self.puts += 1
        self.kept[key] = backend


@pytest.mark.anyio
async def test_sticky_remembers_a_conversations_backend_only_when_it_changed() -> None:
    store = Store()
    sticky = Sticky(store)
    assert await sticky.preferred("talk") is None
    await sticky.remember("talk", None, "a:1")
    assert await sticky.preferred("talk") == "a:1"
    await sticky.remember("talk", "a:1", "a:1")
    assert store.puts == 1
    await sticky.remember(None, None, "b:1")
    assert await sticky.preferred(None) is None
    assert store.kept == {"talk": "a:1"}


@pytest.mark.anyio
async def test_a_failing_affinity_store_is_a_warning_and_routing_goes_on_without_it() -> None:
    sticky = Sticky(Store(failing=True))
    with capture_logs() as logs:
        assert await sticky.preferred("talk") is None
        await sticky.remember("talk", None, "a:1")
    assert [log["event"] for log in logs] == ["affinity_unavailable", "affinity_unavailable"]


@pytest.mark.anyio
async def test_without_a_store_nothing_is_preferred() -> None:
    sticky = Sticky(None)
    await sticky.remember("talk", None, "a:1")
    assert await sticky.preferred("talk") is None
