"""A pool of Ollama backends: routing by what each has loaded, failover before the first byte, the
circuit breaker, merged lists and fleet operations, through Minato's routes and the doors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from msgspec import UNSET

from minato.errors import ModelNotFoundError, OllamaBusyError, UpstreamError
from minato.ollama.wire import ChatRequest, WireMessage
from minato.settings import Settings
from minato.upstream.failures import says_model_missing
from minato.upstream.pool.facade import OllamaPool
from minato.upstream.ports import Forward
from tests.support.payloads import chat_token, ndjson, not_found, show
from tests.support.pools import A, B, C, Fleet, fx_fleet, fx_pool_settings  # noqa: F401 - fixtures, found by name
from tests.support.served_ollama import Route

pytestmark = pytest.mark.anyio


def _pool(settings: Settings) -> OllamaPool:
    return OllamaPool(settings)  # Minato's own transport, to each backend's served port


async def _probed(settings: Settings) -> OllamaPool:
    """A pool that has taken its backends' inventory, as the periodic probe would."""
    pool = _pool(settings)
    await pool.probe()
    return pool


def _hello(model: str = "llama3.2") -> ChatRequest:
    return ChatRequest(model=model, messages=[WireMessage(role="user", content="hi")], stream=True)


# -- routing --------------------------------------------------------------------------------------


async def test_a_backend_with_the_model_loaded_draws_the_traffic(pool_settings: Settings, fleet: Fleet) -> None:
    for url in (A, B, C):
        fleet.has(url, installed=("llama3.2",))
    fleet.has(C, installed=("llama3.2",), loaded=("llama3.2",))
    pool = await _probed(pool_settings)

    for _ in range(3):
        await pool.chat(_hello())

    assert fleet.served_by() == {A: 0, B: 0, C: 3}
    await pool.aclose()


async def test_streams_spill_to_installed_backends_once_the_loaded_one_runs_its_share(
    pool_settings: Settings, fleet: Fleet
) -> None:
    fleet.has(A, installed=("llama3.2",), loaded=("llama3.2",))
    fleet.has(B, installed=("llama3.2",))
    pool = await _probed(pool_settings)

    streams = [await pool.stream_chat(_hello()) for _ in range(3)]  # parallel=2: the third spills

    assert [s.backend for s in streams] == [fleet.name[A], fleet.name[A], fleet.name[B]]
    running = {status.name: status.in_flight for status in pool.backends()}
    assert running == {fleet.name[A]: 2, fleet.name[B]: 1, fleet.name[C]: 0}
    for stream in streams:
        await stream.aclose()
    assert {status.name: status.in_flight for status in pool.backends()} == {
        fleet.name[A]: 0,
        fleet.name[B]: 0,
        fleet.name[C]: 0,
    }
    # B loaded the model by answering: it now counts as loaded there, so it takes the next one too.
    assert [s.name for s in pool.backends() if "llama3.2" in s.loaded] == [fleet.name[A], fleet.name[B]]
    await pool.aclose()


async def test_equally_good_backends_take_turns(pool_settings: Settings, fleet: Fleet) -> None:
    for url in (A, B, C):
        fleet.has(url, installed=("llama3.2",), loaded=("llama3.2",))
    pool = await _probed(pool_settings)

    for _ in range(6):
        await pool.chat(_hello())

    assert fleet.served_by() == {A: 2, B: 2, C: 2}
    await pool.aclose()


class _Remembered:
    def __init__(self) -> None:
        self.kept: dict[str, str] = {}

    async def get(self, key: str) -> str | None:
        return self.kept.get(key)

    async def put(self, key: str, backend: str) -> None:
        self.kept[key] = backend


async def test_a_conversation_stays_on_the_backend_it_last_used(pool_settings: Settings, fleet: Fleet) -> None:
    for url in (A, B, C):
        fleet.has(url, installed=("llama3.2",), loaded=("llama3.2",))
    remembered = _Remembered()
    pool = OllamaPool(pool_settings, None, remembered)
    await pool.probe()

    first = await pool.stream_chat(_hello(), affinity="owner:talk")
    await first.aclose()
    for _ in range(4):
        await pool.chat(_hello(), affinity="owner:talk")
        await pool.chat(_hello())  # others still take turns around it

    chosen = next(url for url in (A, B, C) if fleet.name[url] == first.backend)
    assert remembered.kept == {"owner:talk": first.backend}
    assert fleet.served_by()[chosen] >= 5
    await pool.aclose()


async def test_a_conversation_leaves_its_backend_when_that_one_is_down(pool_settings: Settings, fleet: Fleet) -> None:
    for url in (A, B):
        fleet.has(url, installed=("llama3.2",), loaded=("llama3.2",))
    remembered = _Remembered()
    remembered.kept["owner:talk"] = fleet.name[A]
    fleet.down(A)
    pool = OllamaPool(pool_settings, None, remembered)
    await pool.probe()

    answer = await pool.chat(_hello(), affinity="owner:talk")

    assert answer.message.content == f"from {B}"
    assert fleet.served_by()[A] == 0, "a backend the probe found down is not asked"
    await pool.aclose()


# -- failover and the breaker ---------------------------------------------------------------------


async def test_a_refused_connection_fails_over_to_the_next_backend_before_the_first_byte(
    pool_settings: Settings, fleet: Fleet
) -> None:
    for url in (A, B):
        fleet.has(url, installed=("llama3.2",), loaded=("llama3.2",))
    pool = await _probed(pool_settings)
    fleet.has(C, installed=("llama3.2",))
    await pool.probe()
    fleet.down(A)  # after the probe: the pool believes A and B are up, and both refuse
    fleet.down(B)

    stream = await pool.stream_chat(_hello())
    batches = [batch async for batch in stream.batches()]

    assert stream.backend == fleet.name[C]
    assert batches[0][0].message.content == f"from {C}"
    await pool.aclose()


async def test_ollamas_server_busy_answer_fails_over(pool_settings: Settings, fleet: Fleet) -> None:
    for url in (A, B):
        fleet.has(url, installed=("llama3.2",), loaded=("llama3.2",))
    pool = await _probed(pool_settings)
    busy = {"error": "server busy, please try again.  maximum pending requests exceeded"}
    fleet.chats[A].respond(503, json=busy)
    fleet.chats[B].respond(503, json=busy)

    with pytest.raises(OllamaBusyError) as both_busy:
        await pool.chat(_hello())
    fleet.chats[B].mock(side_effect=Fleet._answer(B))
    answer = await pool.chat(_hello())

    assert both_busy.value.status_code == 503, "the last backend's answer stands"
    assert answer.message.content == f"from {B}"
    await pool.aclose()


class _Breaking(httpx.AsyncByteStream):
    """A backend that dies half-way through its answer."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield ndjson(chat_token("half an answer"))
        raise httpx.RemoteProtocolError("peer closed connection")


async def test_a_whole_answer_whose_backend_dies_half_way_is_asked_of_the_next_one(
    pool_settings: Settings, fleet: Fleet
) -> None:
    for url in (A, B):
        fleet.has(url, installed=("llama3.2",), loaded=("llama3.2",))
    pool = await _probed(pool_settings)
    fleet.chats[A].mock(side_effect=lambda _: httpx.Response(200, stream=_Breaking()))
    fleet.chats[B].mock(side_effect=lambda _: httpx.Response(200, stream=_Breaking()))
    fleet.chats[C].mock(side_effect=Fleet._answer(C))
    fleet.has(C, installed=("llama3.2",))
    await pool.probe()

    answer = await pool.chat(_hello())

    assert answer.message.content == f"from {C}", "nothing had reached the client: the next backend answers"
    assert answer.backend == fleet.name[C]
    await pool.aclose()


async def test_a_stream_whose_backend_dies_after_its_first_tokens_is_not_moved(
    pool_settings: Settings, fleet: Fleet
) -> None:
    fleet.has(A, installed=("llama3.2",), loaded=("llama3.2",))
    pool = await _probed(pool_settings)
    fleet.chats[A].mock(side_effect=lambda _: httpx.Response(200, stream=_Breaking()))

    stream = await pool.stream_chat(_hello())
    with pytest.raises(UpstreamError, match="broke off"):
        async for _ in stream.batches():
            pass

    assert fleet.served_by() == {A: 1, B: 0, C: 0}, "its first tokens may have reached the client"
    await pool.aclose()


async def test_a_failure_after_ollama_answered_is_not_retried_elsewhere(pool_settings: Settings, fleet: Fleet) -> None:
    for url in (A, B):
        fleet.has(url, installed=("llama3.2",), loaded=("llama3.2",))
    pool = await _probed(pool_settings)
    fleet.chats[A].respond(500, json={"error": "model runner crashed"})
    fleet.chats[B].respond(500, json={"error": "model runner crashed"})

    with pytest.raises(UpstreamError) as failed:
        await pool.chat(_hello())

    assert failed.value.status_code == 502
    assert sum(fleet.served_by().values()) == 1, "a generation Ollama started is never run twice"
    await pool.aclose()


async def test_a_backend_failing_repeatedly_cools_down_and_a_probe_brings_it_back(
    pool_settings: Settings, fleet: Fleet
) -> None:
    settings = msgspec.structs.replace(pool_settings, backend_cooldown=0.2)
    for url in (A, B):
        fleet.has(url, installed=("llama3.2",), loaded=("llama3.2",))
    pool = await _probed(settings)
    fleet.chats[A].mock(side_effect=httpx.ConnectError("refused"))

    for _ in range(6):
        assert (await pool.chat(_hello())).message.content == f"from {B}"
    tried_while_failing = fleet.chats[A].call_count
    states = {s.name: s.state for s in pool.backends()}

    assert tried_while_failing == 2, "after MINATO_BACKEND_FAILURES failures in a row A is left out"
    assert states[fleet.name[A]] == "cooling"
    fleet.chats[A].mock(side_effect=Fleet._answer(A))
    await asyncio.sleep(0.25)
    await pool.probe()
    assert {s.name: s.state for s in pool.backends()}[fleet.name[A]] == "up"
    served = [(await pool.chat(_hello())).message.content for _ in range(4)]
    assert f"from {A}" in served
    await pool.aclose()


# -- a model deleted behind Minato's back ----------------------------------------------------------

LLAMA = "llama3.2"
#: Each backend's (installed, loaded) as its /api/tags and /api/ps say: after `ollama rm` of a loaded
#: model, /api/ps goes on listing it until it expires, and Ollama answers 404.
Inventory = dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
ROUTING_BY_TAGS = [
    pytest.param({A: ((), (LLAMA,)), B: ((LLAMA,), ())}, B, id="loaded-but-deleted-vs-installed"),
    pytest.param({A: ((), (LLAMA,)), B: ((LLAMA,), (LLAMA,))}, B, id="loaded-but-deleted-vs-loaded"),
    pytest.param({A: ((), (LLAMA,)), B: ((), (LLAMA,)), C: ((LLAMA,), ())}, C, id="the-only-holder"),
    pytest.param({A: ((LLAMA,), ()), B: ((), (LLAMA,)), C: ((LLAMA,), (LLAMA,))}, C, id="loaded-holder-first"),
    pytest.param({A: ((LLAMA,), ()), B: ((), (LLAMA,)), C: ((), ())}, A, id="installed-holder-over-ps-only"),
]


@pytest.mark.parametrize(("inventory", "holder"), ROUTING_BY_TAGS)
async def test_only_a_backend_whose_tags_list_the_model_is_routed_to(
    pool_settings: Settings, fleet: Fleet, inventory: Inventory, holder: str
) -> None:
    for url, (installed, loaded) in inventory.items():
        fleet.has(url, installed=installed, loaded=loaded)
    pool = await _probed(pool_settings)

    for _ in range(4):
        await pool.chat(_hello())
    streams = [await pool.stream_chat(_hello()) for _ in range(2)]  # parallel=2: both on the loaded holder
    for stream in streams:
        await stream.aclose()

    assert fleet.served_by() == {url: (6 if url == holder else 0) for url in (A, B, C)}
    await pool.aclose()


async def test_a_conversations_backend_that_no_longer_lists_the_model_is_not_preferred(
    pool_settings: Settings, fleet: Fleet
) -> None:
    fleet.has(A, installed=(), loaded=(LLAMA,))
    fleet.has(B, installed=(LLAMA,))
    remembered = _Remembered()
    remembered.kept["owner:talk"] = fleet.name[A]
    pool = OllamaPool(pool_settings, None, remembered)
    await pool.probe()

    answer = await pool.chat(_hello(), affinity="owner:talk")

    assert answer.backend == fleet.name[B]
    assert fleet.served_by()[A] == 0
    assert remembered.kept == {"owner:talk": fleet.name[B]}
    await pool.aclose()


def _removed_behind_minatos_back(fleet: Fleet, url: str, answer: httpx.Response | None = None) -> None:
    """``ollama rm`` on a loaded model, as the backend then answers: not in its tags, still in its ps,
    and Ollama's 404 for a generation."""
    fleet.has(url, installed=(), loaded=(LLAMA,))
    fleet.chats[url].mock(return_value=answer or httpx.Response(404, json=not_found(LLAMA)))


def _watch(route: Route) -> threading.Event:
    """An event set when ``route`` is next asked (a background refresh), answering as it did; set on
    the served backend's own thread."""
    asked = threading.Event()
    answer = route.return_value
    assert answer is not None

    def answering(_: httpx.Request) -> httpx.Response:
        asked.set()
        return answer

    route.mock(side_effect=answering)
    return asked


@pytest.fixture(name="stale_pool")
async def fx_stale_pool(pool_settings: Settings, fleet: Fleet) -> AsyncIterator[OllamaPool]:
    """A and B both have llama3.2 (loaded on A, which routing prefers); then it is removed from A behind
    Minato's back, while the pool still believes A has it. One failure would cool a backend down."""
    fleet.has(A, installed=(LLAMA,), loaded=(LLAMA,))
    fleet.has(B, installed=(LLAMA,))
    pool = _pool(msgspec.structs.replace(pool_settings, backend_failures=1))
    assert (await pool.chat(_hello())).backend == fleet.name[A]  # the pool took its inventory and used A
    fleet.reset()
    _removed_behind_minatos_back(fleet, A)
    yield pool
    await pool.aclose()


def _state(pool: OllamaPool, name: str) -> str:
    return {status.name: status.state for status in pool.backends()}[name]


async def test_ollamas_404_from_a_stale_backend_fails_over_to_the_holder_and_strikes_it_at_once(
    stale_pool: OllamaPool, fleet: Fleet
) -> None:
    refreshed = _watch(fleet[A]["tags"])

    answer = await stale_pool.chat(_hello())
    holders = stale_pool.holders(LLAMA)
    state = _state(stale_pool, fleet.name[A])
    assert await asyncio.to_thread(refreshed.wait, 10)  # A's inventory is asked for again
    later = [(await stale_pool.chat(_hello())).backend for _ in range(3)]

    assert answer.backend == fleet.name[B]
    assert answer.message.content == f"from {B}"
    assert holders == [fleet.name[B]], "struck from A's inventory before the refresh answered"
    assert state == "up", "a 404 is an answer: no failure for the breaker (MINATO_BACKEND_FAILURES=1)"
    assert later == [fleet.name[B]] * 3
    assert fleet.served_by() == {A: 1, B: 4, C: 0}, "A was asked once, then skipped"
    assert {status.name: status.in_flight for status in stale_pool.backends()} == dict.fromkeys(fleet.name.values(), 0)


async def test_a_stream_fails_over_from_a_stale_backend_before_its_first_byte(
    stale_pool: OllamaPool, fleet: Fleet
) -> None:
    stream = await stale_pool.stream_chat(_hello())
    running = {status.name: status.in_flight for status in stale_pool.backends()}
    batches = [batch async for batch in stream.batches()]

    assert stream.backend == fleet.name[B]
    assert batches[0][0].message.content == f"from {B}"
    assert running == {fleet.name[A]: 0, fleet.name[B]: 1, fleet.name[C]: 0}, (
        "A's attempt no longer counts as in flight"
    )
    assert _state(stale_pool, fleet.name[A]) == "up"
    assert stale_pool.holders(LLAMA) == [fleet.name[B]]


async def test_show_and_facts_fail_over_from_a_stale_backend(stale_pool: OllamaPool, fleet: Fleet) -> None:
    shows = {
        A: fleet[A].post("/api/show").respond(404, json=not_found(f"{LLAMA}:latest")),
        B: fleet[B].post("/api/show").respond(200, json=show(["completion"])),
    }

    shown = await stale_pool.show(LLAMA)
    facts = await stale_pool.facts(LLAMA)

    assert shown.capabilities == ["completion"]
    assert facts.capabilities == frozenset({"completion"})
    assert (shows[A].call_count, shows[B].call_count) == (1, 2), "A asked once, then struck"
    assert _state(stale_pool, fleet.name[A]) == "up"


async def test_the_last_holders_404_is_ollamas_and_every_stale_backend_is_struck(
    stale_pool: OllamaPool, fleet: Fleet
) -> None:
    _removed_behind_minatos_back(fleet, B)

    with pytest.raises(ModelNotFoundError) as missing:
        await stale_pool.chat(_hello())

    assert missing.value.detail == f"model '{LLAMA}' not found", "Ollama's words"
    assert fleet.served_by() == {A: 1, B: 1, C: 0}
    assert stale_pool.holders(LLAMA) == []
    assert (_state(stale_pool, fleet.name[A]), _state(stale_pool, fleet.name[B])) == ("up", "up")


#: Each door's request and Ollama's "model not found" in that door's words (Ollama's source: native
#: `model '%s' not found`, the scheduler's `model %q not found, try pulling it first`, and the
#: OpenAI and Anthropic middleware's error objects).
DOORS = [
    pytest.param("/api/chat", b'{"error":"model \'llama3.2\' not found"}', id="native-chat"),
    pytest.param("/api/generate", b'{"error":"model \'llama3.2\' not found"}', id="native-generate"),
    pytest.param("/api/embed", b'{"error":"model \\"llama3.2\\" not found, try pulling it first"}', id="embed"),
    pytest.param(
        "/v1/chat/completions",
        b'{"error":{"message":"model \'llama3.2\' not found","type":"not_found_error","param":null,"code":null}}\n',
        id="openai-chat",
    ),
    pytest.param(
        "/v1/embeddings",
        b'{"error":{"message":"model \\"llama3.2\\" not found, try pulling it first","type":"not_found_error",'
        b'"param":null,"code":null}}\n',
        id="openai-embeddings",
    ),
    pytest.param(
        "/v1/messages",
        b'{"type":"error","error":{"type":"not_found_error","message":"model \'llama3.2\' not found"},'
        b'"request_id":"req_1"}\n',
        id="anthropic",
    ),
]


def _missing(body: bytes) -> httpx.Response:
    return httpx.Response(404, content=body, headers={"content-type": "application/json; charset=utf-8"})


async def _forwarded(pool: OllamaPool, path: str) -> tuple[int, bytes, str, str]:
    answer = await pool.forward(
        Forward("POST", path, b'{"model":"llama3.2"}', content_type="application/json"), model=LLAMA, generation=True
    )
    return answer.status, await answer.read(), answer.content_type, answer.backend


@pytest.mark.parametrize(("path", "words"), DOORS)
async def test_a_forwarded_404_from_a_stale_backend_fails_over_on_every_door(
    stale_pool: OllamaPool, fleet: Fleet, path: str, words: bytes
) -> None:
    doors = {
        A: fleet[A].post(path).mock(return_value=_missing(words)),
        B: fleet[B].post(path).respond(200, json={"answered": "by B"}),
    }

    first = await _forwarded(stale_pool, path)
    again = await _forwarded(stale_pool, path)

    assert first == (200, b'{"answered":"by B"}', "application/json", fleet.name[B])
    assert again == first
    assert (doors[A].call_count, doors[B].call_count) == (1, 2)
    assert stale_pool.holders(LLAMA) == [fleet.name[B]]
    assert _state(stale_pool, fleet.name[A]) == "up"
    assert {status.name: status.in_flight for status in stale_pool.backends()} == dict.fromkeys(fleet.name.values(), 0)


@pytest.mark.parametrize(("path", "words"), DOORS)
async def test_the_last_holders_forwarded_404_reaches_the_client_as_ollama_said_it(
    stale_pool: OllamaPool, fleet: Fleet, path: str, words: bytes
) -> None:
    _removed_behind_minatos_back(fleet, B)
    fleet[A].post(path).mock(return_value=_missing(b'{"error":"model \'llama3.2:latest\' not found"}'))
    fleet[B].post(path).mock(return_value=_missing(words))

    answered = await _forwarded(stale_pool, path)

    assert answered == (404, words, "application/json; charset=utf-8", fleet.name[B]), "byte for byte, B's"
    assert stale_pool.holders(LLAMA) == []
    assert (_state(stale_pool, fleet.name[A]), _state(stale_pool, fleet.name[B])) == ("up", "up")
    assert {status.name: status.in_flight for status in stale_pool.backends()} == dict.fromkeys(fleet.name.values(), 0)


NOT_A_MISSING_MODEL = [
    pytest.param(httpx.Response(404, text="404 page not found"), id="gin-no-such-route"),
    pytest.param(httpx.Response(404, json={"error": 'blob "sha256:00" not found'}), id="a-blob"),
    pytest.param(httpx.Response(404, json={"error": "model 'llama3.2' not found, or is it"}), id="other-words"),
    pytest.param(httpx.Response(400, json={"error": "model 'llama3.2' not found"}), id="not-a-404"),
]


@pytest.mark.parametrize("refusal", NOT_A_MISSING_MODEL)
async def test_any_other_refusal_is_the_clients_answer_and_the_backend_keeps_the_model(
    pool_settings: Settings, fleet: Fleet, refusal: httpx.Response
) -> None:
    fleet.has(A, installed=(LLAMA,), loaded=(LLAMA,))
    fleet.has(B, installed=(LLAMA,))
    pool = await _probed(pool_settings)
    fleet.chats[A].mock(return_value=refusal)

    answered = await _forwarded(pool, "/api/chat")

    assert answered[:2] == (refusal.status_code, refusal.content)
    assert fleet.served_by() == {A: 1, B: 0, C: 0}
    assert pool.holders(LLAMA) == [fleet.name[A], fleet.name[B]]
    await pool.aclose()


@pytest.mark.parametrize(
    ("status", "body", "missing"),
    [
        (404, b'{"error":"model \'llama3.2\' not found"}', True),
        (404, b'{"error":"model \'\' not found"}', True),
        (404, b'{"error":"model \\"all-minilm\\" not found, try pulling it first"}', True),
        (404, b'{"error":{"message":"model \'x:latest\' not found","type":"not_found_error"}}\n', True),
        (404, b'{"type":"error","error":{"type":"not_found_error","message":"model \'x\' not found"}}', True),
        (404, b"404 page not found", False),
        (404, b'{"error":"blob \\"sha256:00\\" not found"}', False),
        (404, b'{"error":"model \\"x\\" not found"}', True),
        (404, b'{"error":"the model \'x\' not found"}', False),
        (500, b'{"error":"model \'x\' not found"}', False),
        (404, b"{not json", False),
    ],
)
def test_ollamas_model_not_found_is_told_by_its_words_on_every_door(status: int, body: bytes, missing: bool) -> None:
    assert says_model_missing(status, body) is missing


# -- the fleet as one -----------------------------------------------------------------------------


async def test_a_load_goes_where_routing_would_send_the_next_request(pool_settings: Settings, fleet: Fleet) -> None:
    for url in (A, B, C):
        fleet.has(url, installed=("llama3.2",))
    fleet.has(B, installed=("llama3.2",), loaded=("llama3.2",))
    generates = {url: fleet[url].post("/api/generate").respond(200, json={"done": True}) for url in (A, B, C)}
    pool = await _probed(pool_settings)

    chosen = await pool.load("llama3.2", UNSET, {})

    assert chosen == fleet.name[B], "where the model is loaded already"
    assert [generates[u].call_count for u in (A, B, C)] == [0, 1, 0]
    await pool.aclose()
