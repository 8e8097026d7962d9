"""Model names the way Ollama compares them."""

from __future__ import annotations

import functools
from typing import Final

DEFAULT_HOST: Final = "registry.ollama.ai"
DEFAULT_NAMESPACE: Final = "library"
DEFAULT_TAG: Final = "latest"


# Asked several times per request (routing, slots, labels) for the same few names; bounded.
@functools.lru_cache(maxsize=4096)
def canonical_model_name(model: str) -> str:
    """Return the one spelling of ``model`` that every spelling of the same model shares.

    Ollama fills in ``registry.ollama.ai``, ``library`` and ``:latest`` and compares names without
    regard to case, so ``Llama3.2``, ``library/llama3.2`` and ``registry.ollama.ai/library/llama3.2:latest``
    are one model: all three become ``llama3.2:latest``. Whatever counts, caches, routes or labels
    models keys on this, so that no spelling counts as a second model.
    """
    name = model.strip().lower()
    tag = DEFAULT_TAG
    if name.rfind(":") > name.rfind("/"):
        name, _, tag = name.rpartition(":")
    parts = name.split("/")
    if len(parts) >= 3 and parts[0] == DEFAULT_HOST:
        parts = parts[1:]
    if len(parts) == 2 and parts[0] == DEFAULT_NAMESPACE:
        parts = parts[1:]
    return f"{'/'.join(parts)}:{tag or DEFAULT_TAG}"
