"""Minato: a fast, secure HTTP gateway in front of an Ollama daemon."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("minato")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
