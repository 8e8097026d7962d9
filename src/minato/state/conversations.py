"""What a conversation is made of, and the trimming policy every store applies."""

from __future__ import annotations

import re
from typing import Final

import msgspec

from minato.errors import InvalidInputError

SESSION_ID: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
SESSION_ID_RULE: Final = "1-128 characters: letters, digits, '_', '-', '.', ':'"


class StoredMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One message of a conversation, as kept by a store."""

    role: str
    content: str
    images: list[str] = msgspec.field(default_factory=list)
    """Base64 images still kept for follow-up questions (dropped first when over budget)."""
    image_count: int = 0
    """Images the message was sent with, even if their bytes were dropped since."""
    model: str | None = None
    at: float = 0.0
    """Unix time the message was recorded."""

    @property
    def image_bytes(self) -> int:
        """Base64 size of the images still kept."""
        return sum(len(image) for image in self.images)


class SessionAddress(msgspec.Struct, frozen=True, kw_only=True):
    """What names a conversation: the first fields of every shape it is kept, listed or shown in."""

    owner: str
    """Fingerprint of the key that created it (``""``: keyless, or kept from before keys owned them)."""
    id: str


class Session(SessionAddress, frozen=True, kw_only=True):
    """A whole conversation."""

    system_prompt: str | None
    messages: list[StoredMessage]
    created_at: float
    """Unix time it was created."""
    last_active: float
    """Unix time its last turn was recorded."""


class SessionSummary(SessionAddress, frozen=True, kw_only=True):
    """A conversation in a listing."""

    message_count: int
    last_active: float
    """Unix time its last turn was recorded."""


class Bounds(msgspec.Struct, frozen=True, kw_only=True):
    """What one conversation may keep; a store trims it to these after every turn."""

    max_messages: int
    image_budget: int
    """Base64 bytes of images kept for follow-up questions."""


class Caps(msgspec.Struct, frozen=True, kw_only=True):
    """How many conversations a store keeps; every write applies these, and so does the sweep.

    A write makes room in its own owner's conversations first (beyond ``max_per_key``; the keyless
    owner ``""`` is exempt), then, while the store holds more than ``max_sessions``, in those of the
    owner holding the most (ties: the owner whose least recently active conversation is the oldest,
    then the smallest owner). Either way the least recently active conversation goes first (ties: the
    greatest id, the last of a listing), and never the one being written. The sweep does the same
    for every owner over ``max_per_key``, then for the store.
    """

    max_sessions: int
    max_per_key: int


def validate_session_id(value: str, source: str = "path") -> str:
    """Return ``value`` if it is a valid session id, else raise a 422 naming the rule."""
    if not SESSION_ID.fullmatch(value):
        raise InvalidInputError.single(source, "session", f"must be {SESSION_ID_RULE}")
    return value


def trim_plan(image_sizes: list[int], bounds: Bounds) -> tuple[int, int]:
    """Decide what to drop so a conversation fits its ``bounds``.

    ``image_sizes`` holds, per message in order, the bytes of images it still keeps. Returns
    ``(drop, strip)``: drop the first ``drop`` messages entirely, then strip the images
    of the first ``strip`` of the remaining ones. Whole user/assistant pairs are dropped, oldest
    first; the system prompt lives outside the messages and is never dropped. Images go before
    text: a follow-up about an old picture is worth less than the conversation itself.
    """
    drop = 0
    excess = len(image_sizes) - bounds.max_messages
    if excess > 0:
        drop = excess + (excess % 2)  # whole pairs
    kept = image_sizes[drop:]
    total = sum(kept)
    strip = 0
    while total > bounds.image_budget and strip < len(kept):
        total -= kept[strip]
        strip += 1
    return drop, strip
