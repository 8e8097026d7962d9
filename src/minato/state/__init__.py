"""Where the state behind Minato's guarantees lives: one process, one machine's workers, or Redis.

The interfaces are in :mod:`minato.state.protocols`; each home implements all of them, and
:func:`minato.state.homes.open_state` picks the one the settings call for.
"""
