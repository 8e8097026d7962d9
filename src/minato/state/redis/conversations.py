"""Conversations in Redis: the store, and the keys it keeps them in.

Keys, all under ``minato:`` (:data:`~minato.state.redis.link.PREFIX`; ``<conv>`` is
``<owner>:<id>``, ``<name>`` is ``<id> <owner>``: ids and owners never hold a space):

``minato:c:<conv>`` (hash, expires ``MINATO_SESSION_TTL`` after its last write)
    One conversation: ``created``, ``active``, ``prompt`` (absent: none), its messages ``first`` up to
    ``next`` (exclusive) as ``m<seq>`` (msgpack, without images), their kept images as ``i<seq>`` with
    their size in ``s<seq>``, and ``v``, a version bumped by every change to its messages.
``minato:active`` (sorted set of ``<name>``, score minus the last activity)
    Every conversation, most recently active first (ties by id, then owner): the global listing, the
    idle sweep, and the count the store's cap (``MINATO_MAX_SESSIONS``) is checked against.
``minato:o:<owner>`` (sorted set of ids, same scores), ``minato:ids`` (lexical sorted set of ``<name>``)
    One owner's listing, its count and its least recently active conversation (the last: ties by the
    greatest id); who has a conversation with an id.
``minato:holders`` (sorted set of ``<oldest activity> <owner>``, score minus the owner's count; the time
    zero-padded so members sort as numbers), ``minato:holding`` (hash owner → its member there)
    The owner holding the most conversations first, ties by the oldest activity then the owner: whom
    the store's cap takes from. Every write applies the caps (:class:`~minato.state.conversations.Caps`), so
    making room is a few O(log n) steps, never a scan. ``minato:holders:built`` marks the index as built
    for conversations kept by a Minato from before it (the first sweep builds it, once).
``minato:images`` (sorted set of ``<seq> <size> <name>``, score the message's time), ``minato:image_bytes``
    Every kept image, oldest first, and their total: the store-wide image budget.
``minato:ci:<conv>`` (set)
    A conversation's members of ``minato:images``, so they go with it even after its hash expired.
An index entry whose conversation expired on its own is swept by :meth:`RedisStore.expire` (the
manager runs it every minute); until then a listing skips it.
"""

from __future__ import annotations

import math
import secrets
from typing import TYPE_CHECKING, Final, cast

import msgspec
import structlog

from minato.errors import SessionDamagedError, StateUnavailableError
from minato.state.conversations import Bounds, Caps, Session, SessionSummary, StoredMessage, trim_plan
from minato.state.redis.link import PREFIX, Link

if TYPE_CHECKING:
    from minato.settings import Settings

logger = structlog.get_logger("minato.state")

#: Times an append is tried again when the conversation changed between reading it and writing it.
WRITE_ATTEMPTS: Final = 10

_text_encoder: Final = msgspec.msgpack.Encoder()
_message_decoder: Final = msgspec.msgpack.Decoder(StoredMessage)
_images_decoder: Final = msgspec.msgpack.Decoder(list[str])


def conversation(owner: str, session_id: str) -> str:
    """``<conv>`` in the keys: ``<owner>:<id>``."""
    return f"{owner}:{session_id}"


def _number(value: float) -> str:
    """A float as Redis keeps it: exactly (``repr`` round-trips)."""
    return repr(float(value))


class RedisStore:
    """Conversations in Redis (see the module's docstring for the keys)."""

    def __init__(self, link: Link, settings: Settings) -> None:
        self._link = link
        self._ttl_ms = str(math.ceil(settings.session_ttl * 1000))
        self._read_plan = link.script("conversations", "read_plan")
        self._append = link.script("conversations", "append")
        self._set_prompt = link.script("conversations", "set_prompt")
        self._delete = link.script("conversations", "delete")
        self._list = link.script("conversations", "list")
        self._expire = link.script("conversations", "expire")
        self._image_budget = link.script("conversations", "image_budget")

    async def open(self) -> None:
        """Nothing to prepare: the keys appear with the first conversation."""

    async def close(self) -> None:
        """Nothing to release: the connections are the shared state's."""

    async def get(self, owner: str, session_id: str) -> Session | None:
        """Return a conversation, or ``None`` (also once it expired on its own)."""
        # Without decode_responses, redis-py answers bytes: its annotations allow for either.
        fields = cast(
            "dict[bytes, bytes]",
            await self._link.run(self._link.client.hgetall(f"{PREFIX}c:{conversation(owner, session_id)}")),
        )
        if not fields:
            return None
        try:
            messages = []
            for seq in range(int(fields[b"first"]), int(fields[b"next"])):
                message = _message_decoder.decode(fields[b"m%d" % seq])
                images = fields.get(b"i%d" % seq)
                if images is not None:
                    message = msgspec.structs.replace(message, images=_images_decoder.decode(images))
                messages.append(message)
            prompt = fields.get(b"prompt")
            return Session(
                owner=owner,
                id=session_id,
                system_prompt=None if prompt is None else prompt.decode(),
                messages=messages,
                created_at=float(fields[b"created"]),
                last_active=float(fields[b"active"]),
            )
        except (KeyError, ValueError, msgspec.DecodeError) as exc:
            logger.warning("session_damaged", owner=owner, session=session_id, error=repr(exc))
            raise SessionDamagedError(owner, session_id, "its record in Redis cannot be read") from exc

    async def owners_of(self, session_id: str) -> list[str]:
        """Return the owners having a conversation with this id, sorted."""
        names = cast(
            "list[bytes]",
            await self._link.run(self._link.client.zrangebylex(f"{PREFIX}ids", f"[{session_id} ", f"({session_id}!")),
        )
        return [name.decode()[len(session_id) + 1 :] for name in names]

    async def append(
        self, owner: str, session_id: str, messages: list[StoredMessage], bounds: Bounds, *, caps: Caps, now: float
    ) -> None:
        """Add messages and trim them to ``bounds`` (:func:`~minato.state.conversations.trim_plan`), then make
        room within ``caps``, atomically: the plan is made on what the conversation holds, and written only
        if it still holds that."""
        write = secrets.token_hex(8)
        for _ in range(WRITE_ATTEMPTS):
            head: list[bytes] = await self._link.run(self._read_plan(args=[PREFIX, owner, session_id]))
            version, first, held = (head[0].decode(), int(head[1]), [int(s) for s in head[3:]]) if head else ("", 1, [])
            drop, strip = trim_plan([*held, *(m.image_bytes for m in messages)], bounds)
            keep = first + drop
            after = first + len(held)  # the first new message's seq
            stripped = [str(seq) for seq in range(keep, keep + strip) if seq < after and held[seq - first]]
            args: list[str | bytes] = [PREFIX, owner, session_id, _number(now), _number(-now), self._ttl_ms]
            args += [str(caps.max_sessions), str(caps.max_per_key), version, str(keep), str(len(stripped)), *stripped]
            for seq, message in enumerate(messages, start=after):
                images = message.images if seq >= keep + strip else []
                text = _text_encoder.encode(msgspec.structs.replace(message, images=[]))
                args += [text, _text_encoder.encode(images), str(sum(map(len, images))), _number(message.at)]
            args.append(write)
            if await self._link.run(self._append(args=args)):
                return
        raise StateUnavailableError(
            f"the conversation '{session_id}' changed {WRITE_ATTEMPTS} times while its turn was being recorded; "
            "try again shortly"
        )

    async def set_system_prompt(
        self, owner: str, session_id: str, prompt: str | None, *, caps: Caps, now: float
    ) -> None:
        """Set or (``None``) remove a conversation's system prompt, creating it if needed, and make room
        within ``caps``."""
        args = [PREFIX, owner, session_id, _number(now), _number(-now), self._ttl_ms]
        args += [str(caps.max_sessions), str(caps.max_per_key)]
        args += ["0"] if prompt is None else ["1", prompt]
        await self._link.run(self._set_prompt(args=args))

    async def delete(self, owner: str, session_id: str) -> None:
        """Forget a conversation (idempotent), a damaged one too."""
        await self._link.run(self._delete(args=[PREFIX, owner, session_id]))

    async def list(self, owner: str | None, offset: int, limit: int) -> tuple[list[SessionSummary], int]:
        """Return a page of one owner's conversations (``None``: everyone's), most recently active first
        (ties by id, then owner), and their total count."""
        args = [PREFIX, owner or "", "0" if owner is None else "1", str(offset), str(limit)]
        flat: list[bytes] = await self._link.run(self._list(args=args))
        rows = [value.decode() for value in flat[1:]]
        page = [
            SessionSummary(
                owner=rows[i], id=rows[i + 1], message_count=int(rows[i + 3]), last_active=float(rows[i + 2])
            )
            for i in range(0, len(rows), 4)
        ]
        return page, int(flat[0])

    async def expire(self, idle_before: float, caps: Caps) -> int:
        """Drop conversations idle since before ``idle_before`` (and forget those that expired on their
        own), then those beyond ``caps``; return how many."""
        args = [PREFIX, _number(-idle_before), str(caps.max_sessions), str(caps.max_per_key)]
        dropped: int = await self._link.run(self._expire(args=args))
        return dropped

    async def enforce_image_budget(self, budget: int) -> int:
        """Drop the oldest images of the whole store (their text stays) until at most ``budget`` bytes are
        kept; return how many messages lost their images."""
        stripped: int = await self._link.run(self._image_budget(args=[PREFIX, str(budget)]))
        return stripped


__all__ = ["WRITE_ATTEMPTS", "RedisStore", "conversation"]
