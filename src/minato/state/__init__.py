"""Where the state behind Minato's guarantees lives: one process, one machine's workers, or Redis.

The interfaces are in :mod:`minato.state.protocols`; each home implements all of them.
"""
