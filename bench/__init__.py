"""Minato's overhead benchmark: Minato in front of the Ollama stand-in vs the stand-in alone.

Run it with ``python -m bench`` (``make bench``); ``python -m bench --help`` lists the options.
"""
