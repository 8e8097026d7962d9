"""Conversations: read, list and clear sessions, and set their system prompts.

Seed equivalents: "clear chat history" is ``DELETE /chat/{session}``; "add system prompt" is
``PUT /chat/{session}/system_prompt``.

A conversation belongs to the key that created it. A user key addresses only its own: another
key's conversation is, to it, one that does not exist. An admin key may address every owner's,
naming one with ``owner=`` when several keys have the same id.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Final, NamedTuple

from litestar import delete, get, put
from litestar.di import NamedDependency
from litestar.exceptions import PermissionDeniedException
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody, Parameter

from minato.auth.caller import Caller, Role
from minato.core.options import check_text_length
from minato.core.schemas import SessionListItem, SessionPage, SessionView, SystemPromptBody, iso_time
from minato.core.sessions import SessionManager
from minato.errors import AmbiguousSessionError, SessionNotFoundError
from minato.settings import Settings
from minato.state.conversations import Session, validate_session_id
from minato.web.rendering import VALIDATION_RESPONSE, error_spec

SessionId = Annotated[str, Parameter(description="The conversation id (1-128 letters, digits, `_-.:`).")]
Owner = Annotated[
    str | None,
    Parameter(
        description=(
            "Whose conversation (a key fingerprint; empty: keyless or from before keys owned conversations). "
            "Admin keys only; a user key may name only itself."
        ),
        pattern=r"^([0-9a-f]{12})?$",
    ),
]
MAX_OFFSET: Final = 1_000_000_000
ADDRESSING: Final[dict[int, ResponseSpec]] = {
    403: error_spec("A user key named another key's conversations with `owner=`."),
    409: error_spec(
        "An admin key named an id several keys have, without `owner=` (the detail lists them); or the "
        "conversation is damaged in the store (the detail names it: `DELETE` removes it)."
    ),
    422: VALIDATION_RESPONSE,
}
NOT_FOUND: Final = {404: error_spec("No conversation has that id (or it expired)."), **ADDRESSING}
#: The conversation routes, under one tag.
_get, _put, _delete = partial(get, tags=["chat"]), partial(put, tags=["chat"]), partial(delete, tags=["chat"])


class Conversation(NamedTuple):
    """The conversation a ``/chat/{session_id}`` request addresses: whose, and which."""

    owner: str
    session_id: str


async def provide_conversation(
    session_id: SessionId,
    sessions: NamedDependency[SessionManager],
    caller: NamedDependency[Caller],
    owner: Owner = None,
) -> Conversation:
    """The ``conversation`` dependency of every ``/chat/{session_id}`` route."""
    return Conversation(await _owner(sessions, caller, session_id, owner), session_id)


async def _owner(sessions: SessionManager, caller: Caller, session_id: str, owner: str | None) -> str:
    """Whose conversation ``session_id`` a request addresses.

    A user key: its own, always. An admin key: ``owner``'s if given; else its own if it has one,
    else the only one with that id; with several, the caller must choose.
    """
    validate_session_id(session_id)
    if caller.role < Role.ADMIN:
        if owner is not None and owner != caller.fingerprint:
            raise PermissionDeniedException("a user key can only address its own conversations")
        return caller.fingerprint
    if owner is not None:
        return owner
    owners = await sessions.owners_of(session_id)
    if not owners or caller.fingerprint in owners:
        return caller.fingerprint
    if len(owners) == 1:
        return owners[0]
    listed = ", ".join(f"'{o}'" for o in owners)
    raise AmbiguousSessionError(
        f"several keys have a conversation '{session_id}' (owners {listed}); add owner=<one of them>"
    )


async def _existing(sessions: SessionManager, owner: str, session_id: str) -> Session:
    session = await sessions.get(owner, session_id)
    if session is None:
        raise SessionNotFoundError(f"no conversation '{session_id}'")
    return session


@_get(
    "/chat",
    operation_id="ListSessions",
    summary="List conversations",
    responses={403: ADDRESSING[403], 422: VALIDATION_RESPONSE},
)
async def list_sessions(
    sessions: NamedDependency[SessionManager],
    caller: NamedDependency[Caller],
    offset: Annotated[int, Parameter(ge=0, le=MAX_OFFSET, description="Conversations to skip.")] = 0,
    limit: Annotated[int, Parameter(ge=1, le=100, description="Conversations per page.")] = 20,
    owner: Owner = None,
) -> SessionPage:
    """Return a page of the caller's conversations (an admin key: everyone's, or ``owner``'s) with
    their message counts and last activity."""
    if caller.role < Role.ADMIN:
        if owner is not None and owner != caller.fingerprint:
            raise PermissionDeniedException("a user key can only list its own conversations")
        owner = caller.fingerprint
    page, total = await sessions.page(owner, offset, limit)
    items = [
        SessionListItem(owner=s.owner, id=s.id, message_count=s.message_count, last_active=iso_time(s.last_active))
        for s in page
    ]
    return SessionPage(sessions=items, total=total, offset=offset, limit=limit)


@_get(
    "/chat/{session_id:str}",
    operation_id="GetSession",
    summary="Read a conversation",
    responses=NOT_FOUND,
)
async def get_session(
    conversation: NamedDependency[Conversation], sessions: NamedDependency[SessionManager]
) -> SessionView:
    """Return the system prompt and every message of a conversation."""
    return SessionView.of(await _existing(sessions, *conversation))


@_delete(
    "/chat/{session_id:str}",
    operation_id="ClearSession",
    summary="Clear a conversation (the seed's 'clear chat history')",
    responses=ADDRESSING,
)
async def clear_session(conversation: NamedDependency[Conversation], sessions: NamedDependency[SessionManager]) -> None:
    """Forget a conversation and its system prompt (a damaged one too); clearing an unknown one
    is not an error."""
    await sessions.delete(*conversation)


@_put(
    "/chat/{session_id:str}/system_prompt",
    operation_id="SetSystemPrompt",
    summary="Set a conversation's system prompt (the seed's 'add system prompt')",
    responses=ADDRESSING,
)
async def set_system_prompt(
    conversation: NamedDependency[Conversation],
    data: JSONBody[SystemPromptBody],
    sessions: NamedDependency[SessionManager],
    settings: NamedDependency[Settings],
) -> SessionView:
    """Set the system prompt every later turn of the conversation starts with (creates it if new)."""
    check_text_length("system_prompt", data.system_prompt, settings, source="body")
    await sessions.set_system_prompt(*conversation, data.system_prompt)
    return SessionView.of(await _existing(sessions, *conversation))


@_delete(
    "/chat/{session_id:str}/system_prompt",
    operation_id="RemoveSystemPrompt",
    summary="Remove a conversation's system prompt",
    responses=NOT_FOUND,
)
async def remove_system_prompt(
    conversation: NamedDependency[Conversation], sessions: NamedDependency[SessionManager]
) -> None:
    """Remove the system prompt; the messages stay."""
    await _existing(sessions, *conversation)
    await sessions.set_system_prompt(*conversation, None)
