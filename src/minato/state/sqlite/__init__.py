"""The SQLite file: the conversations of one process or of the workers of one machine, and the state
those workers share; :mod:`minato.state.sqlite.home` opens the latter."""
