"""Ollama's vocabulary, no I/O: model names, the runner options, the native wire shapes."""
