"""The shared state in Redis (or Valkey), for replicas on several machines: one module per primitive,
their Lua scripts in ``lua/``; :mod:`minato.state.redis.home` opens it."""
