"""The fleet: what acts on several backends at once (pull, load, unload, delete, the lists), and the
merging of their answers into one: :func:`fan_in` for streams, :func:`~.inventory.each_once` for lists."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec
import structlog

from minato.errors import MinatoError, ModelNotFoundError, OllamaConnectionLostError, OllamaUnavailableError
from minato.ollama.names import canonical_model_name
from minato.ollama.wire import PsResponse, PullProgress, TagsResponse
from minato.tasks import cancel_and_wait
from minato.upstream.pool.failover import attempt, replayed
from minato.upstream.pool.inventory import each_once
from minato.upstream.streams import RawResponse

if TYPE_CHECKING:
    from msgspec import UnsetType

    from minato.upstream.client import OllamaClient
    from minato.upstream.pool.backend import Backend
    from minato.upstream.pool.inventory import Inventory
    from minato.upstream.streams import PullProgressStream, PullStream

logger = structlog.get_logger("minato.pool")
K = TypeVar("K")
Item = TypeVar("Item")
T = TypeVar("T")
_JSON: Final = "application/json; charset=utf-8"
_NDJSON: Final = "application/x-ndjson"
_SUCCESS: Final = b'"status":"success"'
_END: Final = object()


async def fan_in(sources: list[tuple[K, AsyncIterator[Item]]]) -> AsyncIterator[tuple[K, Item]]:
    """Every source's items as they come, each with its source's key; a source's failure raises here
    (and stops the others). Closing the result stops every source's reader."""
    queue: asyncio.Queue[tuple[K, Any]] = asyncio.Queue()

    async def read(key: K, source: AsyncIterator[Item]) -> None:
        try:
            async for item in source:
                await queue.put((key, item))
        except BaseException as exc:  # handed to the consumer, which raises it
            await queue.put((key, exc))
        else:
            await queue.put((key, _END))

    readers = [asyncio.create_task(read(key, source)) for key, source in sources]
    try:
        left = len(readers)
        while left:
            key, item = await queue.get()
            if item is _END:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield key, item
    finally:
        for reader in readers:
            await cancel_and_wait(reader)


class FleetPull:
    """A pull onto several backends: their progress lines merged, each naming its backend, and one
    success once all of them succeeded (the first failure raises, naming its backend)."""

    def __init__(self, streams: list[PullStream], refresh: list[tuple[Backend, Callable[[Backend], None]]]) -> None:
        self._streams = streams
        self._refresh = refresh

    async def progress(self) -> AsyncIterator[list[PullProgress]]:
        """Yield each backend's batches as they come (``backend`` set); one success line at the end."""
        if len(self._streams) == 1:
            stream = self._streams[0]
            async for batch in stream.progress():
                # The success line is the pull's as a whole, as with several backends.
                yield [
                    item if item.status == "success" else msgspec.structs.replace(item, backend=stream.backend)
                    for item in batch
                ]
            return
        async for name, batch in fan_in([(stream.backend, _named(stream)) for stream in self._streams]):
            shown = [msgspec.structs.replace(p, backend=name) for p in batch if p.status != "success"]
            if shown:
                yield shown
        yield [PullProgress(status="success")]

    async def aclose(self) -> None:
        """Stop every backend's pull stream, and refresh what they have."""
        for stream in self._streams:
            with contextlib.suppress(MinatoError):
                await stream.aclose()
        for backend, refresh in self._refresh:
            refresh(backend)


async def _named(stream: PullStream) -> AsyncIterator[list[PullProgress]]:
    """A backend's progress; its failure names it."""
    try:
        async for batch in stream.progress():
            yield batch
    except MinatoError as exc:
        exc.detail = f"{stream.backend}: {exc.detail}"
        raise


def merged_progress(answers: list[tuple[Backend, RawResponse]], idle_timeout: float) -> RawResponse:
    """One NDJSON stream of several backends' progress: each line names its backend; each backend's
    success is held back, and one success ends the stream once all of them succeeded."""

    async def lines() -> AsyncGenerator[bytes, None]:
        try:
            succeeded = 0
            async for backend, line in fan_in([(backend, _lines_of(answer)) for backend, answer in answers]):
                if _SUCCESS in line:
                    succeeded += 1
                    continue
                yield _with_backend(line, backend.name) + b"\n"
            if succeeded == len(answers):
                yield b'{"status":"success"}\n'
        finally:
            for _, answer in answers:
                await answer.aclose()

    # Closing the merged answer closes the generator, which stops every backend's stream.
    where = ", ".join(backend.client.base_url for backend, _ in answers)
    return RawResponse.made(200, _NDJSON, lines(), where, idle_timeout)


async def _lines_of(answer: RawResponse) -> AsyncIterator[bytes]:
    """A backend's progress lines; its refusal or failure as one error line."""
    buffer = b""
    try:
        if answer.status >= 300:  # this backend refused (Ollama's error body): its error line
            content = (await answer.read()).strip()
            if not content.startswith(b"{"):
                text = content.decode("utf-8", "replace")[:500] or f"Ollama answered {answer.status}"
                content = msgspec.json.encode({"error": text})
            yield content
            return
        async for chunk in answer.chunks():
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                if line.strip():
                    yield line
        if buffer.strip():
            yield buffer
    except MinatoError as exc:
        yield msgspec.json.encode({"error": exc.detail})


def _with_backend(line: bytes, name: str) -> bytes:
    if line.startswith(b"{") and line != b"{}":
        return b'{"backend":' + msgspec.json.encode(name) + b"," + line[1:]
    return line


def _entry_name(entry: dict[str, Any]) -> str:
    return str(entry.get("model") or entry.get("name") or entry.get("id") or "")


class Fleet:
    """The operations on several backends at once."""

    def __init__(self, inventory: Inventory, candidates: Callable[[str], Awaitable[list[Backend]]]) -> None:
        self.inventory = inventory
        self._candidates = candidates

    async def pull(self, model: str, backend: str | None = None) -> PullProgressStream:
        """Pull onto every reachable backend (or the named one); return once each found the manifest."""
        inventory = self.inventory
        targets = [inventory.named(backend)] if backend is not None else await inventory.reachable()
        started = await asyncio.gather(*(target.client.pull(model) for target in targets), return_exceptions=True)
        streams = []
        failures: list[BaseException] = []
        for target, outcome in zip(targets, started, strict=True):
            if isinstance(outcome, BaseException):
                failures.append(outcome)
                if isinstance(outcome, MinatoError):
                    logger.warning("pull_not_started", backend=target.name, model=model, detail=outcome.detail)
            else:
                outcome.backend = target.name
                streams.append(outcome)
            inventory.refresh_soon(target)
        if not streams:
            # Every backend refused: the registry's 404 if any said so, else the first failure.
            raise next((f for f in failures if isinstance(f, ModelNotFoundError)), failures[0])
        for failure in failures:
            if not isinstance(failure, MinatoError):
                for stream in streams:
                    await stream.aclose()
                raise failure
        for each in inventory.backends:
            each.client.forget(model)
        inventory.changed()  # the model may be installed by the time anyone asks
        return FleetPull(streams, [(target, inventory.refresh_soon) for target in targets])

    async def load(
        self, model: str, keep_alive: float | str | UnsetType, options: dict[str, Any], backend: str | None = None
    ) -> str:
        """Load where routing would send the model's next request (or on the named backend)."""
        candidates = [self.inventory.named(backend)] if backend is not None else await self._candidates(model)
        call = attempt(self.inventory, candidates, lambda client: client.load(model, keep_alive, options), model=model)
        chosen, _ = await call
        chosen.loaded.add(canonical_model_name(model))
        self.inventory.refresh_soon(chosen)
        return chosen.name

    async def unload(self, model: str) -> None:
        """Unload the model from every backend that has it."""
        targets = await self.inventory.reachable_holders(model)
        await self._everywhere(targets, lambda client: client.unload(model))
        for target in targets:
            target.loaded.discard(canonical_model_name(model))

    async def delete(self, model: str) -> None:
        """Delete the model from every backend that has it (a 404 when none has)."""
        targets = await self.inventory.reachable_holders(model)
        await self._everywhere(targets, lambda client: client.delete(model))
        for target in targets:
            self.inventory.struck(target, canonical_model_name(model))
        self.inventory.changed()

    async def _everywhere(
        self, targets: list[Backend], call: Callable[[OllamaClient], Coroutine[Any, Any, None]]
    ) -> None:
        outcomes = await asyncio.gather(*(call(target.client) for target in targets), return_exceptions=True)
        for target in targets:
            self.inventory.refresh_soon(target)
        failure = next((outcome for outcome in outcomes if isinstance(outcome, BaseException)), None)
        if failure is not None:
            raise failure

    async def running(self) -> PsResponse:
        """Every backend's loaded models, each with its backend."""
        answers = await self.inventory.from_every(lambda client: client.running())
        models = [
            msgspec.structs.replace(model, backend=backend.name) for backend, ps in answers for model in ps.models
        ]
        for backend, ps in answers:
            self.inventory.take_loaded(backend, ps)
        return PsResponse(models=models)

    async def list_models(self) -> TagsResponse:
        """Every backend's installed models, each once."""
        return await self.inventory.list_all()

    async def forward_all(
        self, targets: list[Backend], send: Callable[[OllamaClient], Awaitable[RawResponse]], *, streamed: bool
    ) -> RawResponse:
        """Send to every target and answer for all of them: progress (NDJSON) merged line by line, each
        line naming its backend, a backend's refusal as its error line, and one success at the end once
        every backend succeeded; whole answers once every backend finished (closing one early would stop
        its work), the first failure's if any. ``streamed``: a pull, whose progress may be merged."""
        outcomes = await asyncio.gather(*(send(target.client) for target in targets), return_exceptions=True)
        for target in targets:
            self.inventory.refresh_soon(target)
        self.inventory.changed()  # a pull or a delete: what the backends have is changing
        answers: list[tuple[Backend, RawResponse]] = []
        failure: BaseException | None = None
        for target, outcome in zip(targets, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failure = failure or outcome
            else:
                answers.append((target, outcome))
        if not answers:
            raise failure or OllamaUnavailableError("no Ollama backend answered")
        if streamed and any(answer.content_type.startswith(_NDJSON) for _, answer in answers):
            return merged_progress(answers, self.inventory.settings.idle_timeout)
        contents = await asyncio.gather(*(answer.read() for _, answer in answers))
        chosen = next(
            (index for index, (_, answer) in enumerate(answers) if answer.status >= 300), 0
        )  # a refusal, else the first backend's answer
        return replayed(answers[chosen][1], contents[chosen])

    async def merged_listing(
        self, send: Callable[[OllamaClient], Awaitable[RawResponse]], *, loaded: bool, where: str
    ) -> RawResponse:
        """Every backend's list in one document of the first's shape: ``/api/tags`` and ``/v1/models``
        each model once, ``/api/ps`` (``loaded``) every loaded model with its ``backend``."""
        documents: list[tuple[Backend, dict[str, Any]]] = []
        first: RawResponse | None = None
        for backend, answer in await self.inventory.from_every(send):
            content = await answer.read()
            if answer.status != 200:
                first = first or replayed(answer, content)
                continue
            try:
                document = msgspec.json.decode(content)
            except msgspec.DecodeError:
                continue
            if isinstance(document, dict):
                documents.append((backend, document))
        if not documents:
            if first is not None:
                return first
            raise OllamaConnectionLostError("no backend answered with a model list")
        field = "data" if "data" in documents[0][1] else "models"
        entries = [
            (backend, entry)
            for backend, document in documents
            for entry in document.get(field) or []
            if isinstance(entry, dict)
        ]
        if loaded:
            merged = [{**entry, "backend": backend.name} for backend, entry in entries]
        else:
            merged = each_once((entry for _, entry in entries), _entry_name)
        content = msgspec.json.encode({**documents[0][1], field: merged})
        return RawResponse.made(200, _JSON, content, where, 1.0)
