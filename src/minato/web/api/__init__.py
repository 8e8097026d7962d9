"""HTTP handlers; ``ROUTE_HANDLERS`` is the one place routes are registered, ``HANDLER_DEPENDENCIES``
the one place the dependencies they share are."""

from typing import Final

from litestar.di import Provide
from litestar.types import ControllerRouterHandler

from minato.web.api.chat import (
    clear_session,
    get_session,
    list_sessions,
    provide_conversation,
    remove_system_prompt,
    set_system_prompt,
)
from minato.web.api.common import provide_model
from minato.web.api.generate import (
    generate,
    generate_post,
    generate_stream,
    generate_stream_post,
)
from minato.web.api.health import health, health_head, metrics_endpoint, ready, ready_head
from minato.web.api.lifecycle import delete_model, load, running, server_info, status, unload
from minato.web.api.models import install, models_list
from minato.web.api.queue import queue
from minato.web.api.vision import vision, vision_stream

ROUTE_HANDLERS: Final[list[ControllerRouterHandler]] = [
    generate,
    generate_stream,
    generate_post,
    generate_stream_post,
    vision,
    vision_stream,
    install,
    models_list,
    load,
    unload,
    delete_model,
    running,
    status,
    server_info,
    list_sessions,
    get_session,
    clear_session,
    set_system_prompt,
    remove_system_prompt,
    health,
    health_head,
    ready,
    ready_head,
    metrics_endpoint,
    queue,
]

#: By the name a handler (or another dependency) asks for; Litestar resolves only those a route uses.
HANDLER_DEPENDENCIES: Final[dict[str, Provide]] = {
    "model": Provide(provide_model, sync_to_thread=False),
    "conversation": Provide(provide_conversation),
}

__all__ = ["HANDLER_DEPENDENCIES", "ROUTE_HANDLERS"]
