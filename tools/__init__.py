"""Contributor tools: ``python -m tools.docs`` writes the docs generated from the code (``make docs``)."""
