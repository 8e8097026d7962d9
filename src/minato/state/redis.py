"""The shared state in Redis (or Valkey): what lets several Minato replicas keep one set of guarantees.

Every member talks to ``MINATO_REDIS_URL`` through one bounded pool of connections whose calls time out
after ``MINATO_REDIS_TIMEOUT``; only a broken connection (one left from before Redis restarted) is tried
again, at once and once, so a dead Redis costs a request next to nothing and a hung one that long. A
conversation's writes and a lease are safe to send twice; a limit or a quota would at worst count one
request twice, failing closed. Every failure to reach Redis becomes
:class:`~minato.errors.StateUnavailableError` in Minato's own words (a 503 with ``Retry-After``: fail
closed). Everything that reads and then writes is one Lua script, so it is atomic across replicas. This
needs a single Redis (or a primary), not Redis Cluster: a script reaches keys it computes.

Keys, all under ``minato:`` so one Redis can serve other applications too (``<conv>`` is
``<owner>:<id>``, ``<name>`` is ``<id> <owner>``: ids and owners never hold a space):

``minato:c:<conv>`` (hash, expires ``MINATO_SESSION_TTL`` after its last write)
    One conversation: ``created``, ``active``, ``prompt`` (absent: none), its messages ``first`` up to
    ``next`` (exclusive) as ``m<seq>`` (msgpack, without images), their kept images as ``i<seq>`` with
    their size in ``s<seq>``, and ``v``, a version bumped by every change to its messages.
``minato:active`` (sorted set of ``<name>``, score minus the last activity)
    Every conversation, most recently active first (ties by id, then owner): the global listing, the
    idle sweep, and the count the store's cap (``MINATO_MAX_SESSIONS``) is checked against.
``minato:o:<owner>`` (sorted set of ids, same scores), ``minato:ids`` (lexical sorted set of ``<name>``)
    One owner's listing, its count and its least recently active conversation (the last: ties by the
    greatest id); who has a conversation with an id.
``minato:holders`` (sorted set of ``<oldest activity> <owner>``, score minus the owner's count; the time
    zero-padded so members sort as numbers), ``minato:holding`` (hash owner → its member there)
    The owner holding the most conversations first, ties by the oldest activity then the owner: whom
    the store's cap takes from. Every write applies the caps (:class:`~minato.state.sessions.model.Caps`), so
    making room is a few O(log n) steps, never a scan. ``minato:holders:built`` marks the index as built
    for conversations kept by a Minato from before it (the first sweep builds it, once).
``minato:images`` (sorted set of ``<seq> <size> <name>``, score the message's time), ``minato:image_bytes``
    Every kept image, oldest first, and their total: the store-wide image budget.
``minato:ci:<conv>`` (set)
    A conversation's members of ``minato:images``, so they go with it even after its hash expired.
``minato:turn:<conv>`` (string: a random token, expires ``MINATO_TURN_LEASE``)
    The lease of the conversation's running turn, renewed while it runs.
``minato:rate:<fingerprint>`` (hash ``tokens``, ``at``; expires a minute after its last use, when it is
    full again), ``minato:quota:<fingerprint>`` (hash minute → tokens; expires after the 24 h window)
    A key's token bucket and its generated tokens. Times are Redis's own (``TIME``), so the replicas'
    clocks do not matter.
``minato:affinity:<key>`` (string: a backend's name, expires ``MINATO_SESSION_TTL`` after it was set)
    The backend a conversation last used.

An index entry whose conversation expired on its own is swept by :meth:`RedisStore.expire` (the
manager runs it every minute); until then a listing skips it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Coroutine
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast
from urllib.parse import urlsplit

import msgspec
import redis.exceptions as redis_errors
import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from minato.errors import SessionDamagedError, StateUnavailableError
from minato.state.protocols import HeldTurn, SharedState
from minato.state.quota import BUCKET_SECONDS, WINDOW_MINUTES, Standing
from minato.state.sessions.model import Bounds, Caps, Session, SessionSummary, StoredMessage, trim_plan
from minato.tasks import cancel_and_wait

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from minato.auth.caller import Caller
    from minato.observability.metrics import Metrics
    from minato.settings import Settings

T = TypeVar("T")
logger = structlog.get_logger("minato.state")

PREFIX: Final = "minato:"
#: Connections one process opens at most; a call waits up to ``redis_timeout`` for one, then fails.
MAX_CONNECTIONS: Final = 64
#: Seconds between the pings that keep ``minato_redis_up`` current when nothing else talks to Redis.
HEALTH_INTERVAL_SECONDS: Final = 5.0
#: Times an append is tried again when the conversation changed between reading it and writing it.
WRITE_ATTEMPTS: Final = 10
#: The wait for a conversation's turn polls its lease, first after 5 ms, doubling up to 100 ms.
FIRST_POLL_SECONDS: Final = 0.005
LAST_POLL_SECONDS: Final = 0.1
#: A rate-limit bucket untouched for a minute is full again: forgetting it then changes nothing.
RATE_BUCKET_TTL_MS: Final = 61_000

# Failures of Redis itself (unreachable, too slow, not accepting writes now): a 503, not a bug.
_UNAVAILABLE: Final = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.InvalidResponse,
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
    redis_errors.TryAgainError,
    redis_errors.NoPermissionError,
    OSError,
)

_text_encoder: Final = msgspec.msgpack.Encoder()
_message_decoder: Final = msgspec.msgpack.Decoder(StoredMessage)
_images_decoder: Final = msgspec.msgpack.Decoder(list[str])

# Lua shared by the store's scripts: ARGV[1] is always the prefix.
_PRELUDE: Final = """
local P = ARGV[1]
local function conv_key(owner, id) return P .. 'c:' .. owner .. ':' .. id end
local function images_key(owner, id) return P .. 'ci:' .. owner .. ':' .. id end
local function split(name)
  local id, owner = string.match(name, '^(%S+) (.*)$')
  return owner, id
end
local function forget_image(member)
  if redis.call('ZREM', P .. 'images', member) == 1 then
    redis.call('DECRBY', P .. 'image_bytes', tonumber(string.match(member, '^%d+ (%d+) ')))
  end
end
local function forget_images_of(owner, id)
  local ci = images_key(owner, id)
  for _, member in ipairs(redis.call('SMEMBERS', ci)) do forget_image(member) end
  redis.call('DEL', ci)
end
-- Put the owner where its count and oldest activity now place it in the holders (or out: it holds none).
local function reindex(owner)
  local old = redis.call('HGET', P .. 'holding', owner)
  if old then redis.call('ZREM', P .. 'holders', old) end
  local own = P .. 'o:' .. owner
  local oldest = redis.call('ZRANGE', own, -1, -1, 'WITHSCORES')
  if #oldest == 0 then
    redis.call('HDEL', P .. 'holding', owner)
    return
  end
  local member = string.format('%020.6f', -tonumber(oldest[2])) .. ' ' .. owner
  redis.call('ZADD', P .. 'holders', -redis.call('ZCARD', own), member)
  redis.call('HSET', P .. 'holding', owner, member)
end
local function drop(owner, id)
  forget_images_of(owner, id)
  local name = id .. ' ' .. owner
  redis.call('ZREM', P .. 'active', name)
  redis.call('ZREM', P .. 'ids', name)
  redis.call('ZREM', P .. 'o:' .. owner, id)
  redis.call('DEL', conv_key(owner, id))
  reindex(owner)
end
-- The owner's least recently active conversations beyond the per-key cap, never keep_id (nil: none).
local function cap_owner(owner, max, keep_id)
  if owner == '' then return 0 end  -- the keyless owner has only the store's cap
  local excess = redis.call('ZCARD', P .. 'o:' .. owner) - max
  if excess <= 0 then return 0 end
  local oldest = redis.call('ZRANGE', P .. 'o:' .. owner, -(excess + 1), -1)
  local dropped = 0
  for k = #oldest, 1, -1 do
    if dropped == excess then break end
    if oldest[k] ~= keep_id then
      drop(owner, oldest[k])
      dropped = dropped + 1
    end
  end
  return dropped
end
-- While the store is over its cap, the least recently active of the owner holding the most; never the
-- conversation being written (then the next holder's: the first held nothing else).
local function cap_store(max, keep_owner, keep_id)
  local dropped = 0
  while redis.call('ZCARD', P .. 'active') > max do
    local victim_owner, victim_id
    for _, member in ipairs(redis.call('ZRANGE', P .. 'holders', 0, 1)) do
      local owner = string.match(member, '^%S+ (.*)$')
      for _, id in ipairs(redis.call('ZREVRANGE', P .. 'o:' .. owner, 0, 1)) do
        if not (owner == keep_owner and id == keep_id) then
          victim_owner, victim_id = owner, id
          break
        end
      end
      if victim_id then break end
    end
    if not victim_id then break end
    drop(victim_owner, victim_id)
    dropped = dropped + 1
  end
  return dropped
end
local function cap(owner, id, max_sessions, max_per_key)
  cap_owner(owner, max_per_key, id)
  cap_store(max_sessions, owner, id)
end
-- Create the conversation or mark it active (now, score = -now, ttl in ms): every write's first step.
local function touch(owner, id, now, score, ttl)
  local key = conv_key(owner, id)
  if redis.call('EXISTS', key) == 0 then
    forget_images_of(owner, id)  -- left by a predecessor that expired on its own
    redis.call('HSET', key, 'created', now, 'first', 1, 'next', 1, 'v', 0)
  end
  redis.call('HSET', key, 'active', now)
  redis.call('PEXPIRE', key, ttl)
  local name = id .. ' ' .. owner
  redis.call('ZADD', P .. 'active', score, name)
  redis.call('ZADD', P .. 'o:' .. owner, score, id)
  redis.call('ZADD', P .. 'ids', 0, name)
  reindex(owner)
  return key
end
"""

# ARGV: prefix, owner, id -> {} or {v, first, next, image bytes of each message}
_READ_PLAN: Final = (
    _PRELUDE
    + """
local key = conv_key(ARGV[2], ARGV[3])
local head = redis.call('HMGET', key, 'v', 'first', 'next')
if not head[1] then return {} end
local out = {head[1], head[2], head[3]}
for seq = tonumber(head[2]), tonumber(head[3]) - 1 do
  out[#out + 1] = redis.call('HGET', key, 's' .. seq) or '0'
end
return out
"""
)

# ARGV: prefix, owner, id, now, score, ttl, max sessions, max per key, expected version ('' for none), first
# seq kept, count of seqs to strip, those seqs, then per new message: text, images, image bytes, time; last,
# the write's id. Returns 0 if the conversation changed since its plan was read (nothing written), else 1 (also
# when this write was already made: a call sent again after its connection broke).
_APPEND: Final = (
    _PRELUDE
    + """
local owner, id = ARGV[2], ARGV[3]
local key = conv_key(owner, id)
local write = table.remove(ARGV)
if redis.call('HGET', key, 'w') == write then return 1 end  -- this very write, sent again
if (redis.call('HGET', key, 'v') or '') ~= ARGV[9] then return 0 end
touch(owner, id, ARGV[4], ARGV[5], ARGV[6])
local ci = images_key(owner, id)
local function strip(seq)
  local size = redis.call('HGET', key, 's' .. seq)
  if size then
    local member = seq .. ' ' .. size .. ' ' .. id .. ' ' .. owner
    forget_image(member)
    redis.call('SREM', ci, member)
    redis.call('HDEL', key, 'i' .. seq, 's' .. seq)
  end
end
local first = tonumber(redis.call('HGET', key, 'first'))
local seq = tonumber(redis.call('HGET', key, 'next'))
local keep = tonumber(ARGV[10])
for old = first, math.min(keep, seq) - 1 do
  strip(old)
  redis.call('HDEL', key, 'm' .. old)
end
local stripped = tonumber(ARGV[11])
for k = 1, stripped do strip(ARGV[11 + k]) end
for i = 12 + stripped, #ARGV, 4 do
  if seq >= keep then
    redis.call('HSET', key, 'm' .. seq, ARGV[i])
    if ARGV[i + 2] ~= '0' then
      local member = seq .. ' ' .. ARGV[i + 2] .. ' ' .. id .. ' ' .. owner
      redis.call('HSET', key, 'i' .. seq, ARGV[i + 1], 's' .. seq, ARGV[i + 2])
      redis.call('ZADD', P .. 'images', ARGV[i + 3], member)
      redis.call('SADD', ci, member)
      redis.call('INCRBY', P .. 'image_bytes', ARGV[i + 2])
    end
  end
  seq = seq + 1
end
redis.call('HSET', key, 'first', math.max(first, keep), 'next', seq, 'w', write)
redis.call('HINCRBY', key, 'v', 1)
cap(owner, id, tonumber(ARGV[7]), tonumber(ARGV[8]))
return 1
"""
)

# ARGV: prefix, owner, id, now, score, ttl, max sessions, max per key, '1' and the prompt, or '0' to remove it.
_SET_PROMPT: Final = (
    _PRELUDE
    + """
local key = touch(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
if ARGV[9] == '1' then redis.call('HSET', key, 'prompt', ARGV[10]) else redis.call('HDEL', key, 'prompt') end
cap(ARGV[2], ARGV[3], tonumber(ARGV[7]), tonumber(ARGV[8]))
"""
)

# ARGV: prefix, owner, id
_DELETE: Final = _PRELUDE + "drop(ARGV[2], ARGV[3])"

# ARGV: prefix, owner ('' for everyone's listing with ARGV[3] '0'), '1' for one owner's, offset, limit
# -> {total, then per conversation: owner, id, last active, message count}
_LIST: Final = (
    _PRELUDE
    + """
local owner, one = ARGV[2], ARGV[3] == '1'
local index = one and (P .. 'o:' .. owner) or (P .. 'active')
local total = redis.call('ZCARD', index)
local offset, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local entries = {}
if limit > 0 then entries = redis.call('ZRANGE', index, offset, offset + limit - 1) end
local out = {''}
for _, entry in ipairs(entries) do
  local o, id = owner, entry
  if not one then o, id = split(entry) end
  local head = redis.call('HMGET', conv_key(o, id), 'active', 'first', 'next')
  if head[1] then
    out[#out + 1] = o
    out[#out + 1] = id
    out[#out + 1] = head[1]
    out[#out + 1] = tostring(tonumber(head[3]) - tonumber(head[2]))
  else
    total = total - 1  -- expired on its own; the next sweep forgets it
  end
end
out[1] = tostring(total)
return out
"""
)

# ARGV: prefix, score of the idle limit, max sessions, max per key -> how many conversations were dropped
_EXPIRE: Final = (
    _PRELUDE
    + """
local dropped = 0
-- Conversations kept by a Minato from before the holders index: index their owners, once.
if redis.call('SET', P .. 'holders:built', '1', 'NX') then
  local owners = {}
  for _, name in ipairs(redis.call('ZRANGE', P .. 'active', 0, -1)) do
    local owner = split(name)
    owners[owner] = true
  end
  for owner in pairs(owners) do reindex(owner) end
end
for _, name in ipairs(redis.call('ZRANGE', P .. 'active', '(' .. ARGV[2], '+inf', 'BYSCORE')) do
  local owner, id = split(name)
  drop(owner, id)
  dropped = dropped + 1
end
-- Conversations whose keys expired on their own, least recently active first, up to the first still there.
while true do
  local last = redis.call('ZRANGE', P .. 'active', -1, -1)
  if #last == 0 then break end
  local owner, id = split(last[1])
  if redis.call('EXISTS', conv_key(owner, id)) == 1 then break end
  drop(owner, id)
  dropped = dropped + 1
end
local max_per_key = tonumber(ARGV[4])
for _, member in ipairs(redis.call('ZRANGE', P .. 'holders', '-inf', '(' .. -max_per_key, 'BYSCORE')) do
  dropped = dropped + cap_owner(string.match(member, '^%S+ (.*)$'), max_per_key, nil)
end
return dropped + cap_store(tonumber(ARGV[3]), nil, nil)
"""
)

# ARGV: prefix, budget -> how many messages lost their images
_IMAGE_BUDGET: Final = (
    _PRELUDE
    + """
local total = tonumber(redis.call('GET', P .. 'image_bytes') or '0')
local budget = tonumber(ARGV[2])
local stripped = 0
while total > budget do
  local oldest = redis.call('ZRANGE', P .. 'images', 0, 0)
  if #oldest == 0 then
    redis.call('SET', P .. 'image_bytes', 0)
    break
  end
  local member = oldest[1]
  local seq, size, id, owner = string.match(member, '^(%d+) (%d+) (%S+) (.*)$')
  local key = conv_key(owner, id)
  if redis.call('HGET', key, 's' .. seq) == size then
    redis.call('HDEL', key, 'i' .. seq, 's' .. seq)
    redis.call('HINCRBY', key, 'v', 1)
    stripped = stripped + 1
  end
  forget_image(member)
  redis.call('SREM', images_key(owner, id), member)
  total = total - tonumber(size)
end
return stripped
"""
)

_NOW: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
"""

# KEYS: the bucket; ARGV: depth (= per minute), ttl in ms -> '0' or the seconds until a request is there
_TOKEN_BUCKET: Final = (
    _NOW
    + """
local depth = tonumber(ARGV[1])
local rate = depth / 60
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or depth
local last = tonumber(state[2]) or now
tokens = math.min(depth, tokens + math.max(0, now - last) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return string.format('%.17g', wait)
"""
)

# KEYS: the key's ledger; ARGV: tokens per day, bucket seconds, window minutes
# -> {'0' or seconds to wait, tokens counted in the window}
_QUOTA_CHECK: Final = (
    _NOW
    + """
local limit, width, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local minute = math.floor(now / width)
local flat = redis.call('HGETALL', KEYS[1])
local buckets, total = {}, 0
for i = 1, #flat, 2 do
  local at, tokens = tonumber(flat[i]), tonumber(flat[i + 1])
  if at + window < minute then
    redis.call('HDEL', KEYS[1], flat[i])
  else
    buckets[#buckets + 1] = {at, tokens}
    total = total + tokens
  end
end
if total < limit then return {'0', total} end
-- The oldest buckets expire first: wait for the one whose expiry brings the total under the limit.
table.sort(buckets, function(a, b) return a[1] < b[1] end)
local freed = 0
for _, bucket in ipairs(buckets) do
  freed = freed + bucket[2]
  if total - freed < limit then return {string.format('%.17g', (bucket[1] + window + 1) * width - now), total} end
end
return {'0', total}
"""
)

# KEYS: the key's ledger; ARGV: tokens, bucket seconds, window minutes
_QUOTA_CHARGE: Final = (
    _NOW
    + """
local width, window = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('HINCRBY', KEYS[1], string.format('%d', math.floor(now / width)), ARGV[1])
redis.call('EXPIRE', KEYS[1], (window + 2) * width)
"""
)

# KEYS: a lease; ARGV: a token, lease ms -> 1 if the lease is the token's now (taken, or taken already by
# this call, sent again after its connection broke), else 0
_TAKE: Final = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""
# KEYS: a lease; ARGV: its token, lease ms -> 1 if still held (and renewed), else 0
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: a lease; ARGV: its token -> 1 if it was still held (and is released), else 0
_UNLOCK: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _where(url: str) -> str:
    """Where Redis is, for Minato's sentences: ``host:port`` or a socket path, never credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def _number(value: float) -> str:
    """A float as Redis keeps it: exactly (``repr`` round-trips)."""
    return repr(float(value))


class _Link:
    """The client, and the one place its failures become Minato's (and ``minato_redis_up``)."""

    def __init__(self, client: Redis, settings: Settings, metrics: Metrics) -> None:
        self.client = client
        self.metrics = metrics
        self.where = _where(settings.redis_url)
        self.sentence = f"the shared state (Redis at {self.where}) cannot be reached; try again shortly"
        self._up: bool | None = None

    async def run(self, call: Awaitable[T]) -> T:
        """Await a call to Redis; an unreachable (or too slow) Redis is :class:`StateUnavailableError`."""
        task = asyncio.current_task()
        cancels = task.cancelling() if task else 0
        try:
            result = await call
        except _UNAVAILABLE as exc:
            _cancelled_meanwhile(task, cancels)
            self._mark(False, exc)
            raise StateUnavailableError(self.sentence) from exc
        _cancelled_meanwhile(task, cancels)
        self._mark(True)
        return result

    def script(self, source: str) -> AsyncScript:
        """A Lua script, loaded again by itself into a Redis that restarted."""
        return self.client.register_script(source)

    def _mark(self, up: bool, error: BaseException | None = None) -> None:
        self.metrics.redis_up.set(1 if up else 0)
        if up == self._up:
            return
        self._up = up
        if up:
            logger.info("redis_up", redis=self.where)
        else:
            logger.warning("redis_down", redis=self.where, error=str(error) or type(error).__name__)


def _cancelled_meanwhile(task: asyncio.Task[Any] | None, cancels: int) -> None:
    """Raise the cancellation of ``task`` that arrived during a call, if the call lost it.

    redis-py (8.1, on Python 3.11) can lose a cancellation that arrives while it connects: the call then
    returns, or fails as a connection error, and a cancelled task (a turn's lease renewal, the health
    ping) would run on for ever.
    """
    if task is not None and task.cancelling() > cancels:
        raise asyncio.CancelledError


def _conv(owner: str, session_id: str) -> str:
    return f"{owner}:{session_id}"


class RedisStore:
    """Conversations in Redis (see the module's docstring for the keys)."""

    def __init__(self, link: _Link, settings: Settings) -> None:
        self._link = link
        self._ttl_ms = str(math.ceil(settings.session_ttl * 1000))
        self._read_plan = link.script(_READ_PLAN)
        self._append = link.script(_APPEND)
        self._set_prompt = link.script(_SET_PROMPT)
        self._delete = link.script(_DELETE)
        self._list = link.script(_LIST)
        self._expire = link.script(_EXPIRE)
        self._image_budget = link.script(_IMAGE_BUDGET)

    async def open(self) -> None:
        """Nothing to prepare: the keys appear with the first conversation."""

    async def close(self) -> None:
        """Nothing to release: the connections are the shared state's."""

    async def get(self, owner: str, session_id: str) -> Session | None:
        """Return a conversation, or ``None`` (also once it expired on its own)."""
        # Without decode_responses, redis-py answers bytes: its annotations allow for either.
        fields = cast(
            "dict[bytes, bytes]",
            await self._link.run(self._link.client.hgetall(f"{PREFIX}c:{_conv(owner, session_id)}")),
        )
        if not fields:
            return None
        try:
            messages = []
            for seq in range(int(fields[b"first"]), int(fields[b"next"])):
                message = _message_decoder.decode(fields[b"m%d" % seq])
                images = fields.get(b"i%d" % seq)
                if images is not None:
                    message = msgspec.structs.replace(message, images=_images_decoder.decode(images))
                messages.append(message)
            prompt = fields.get(b"prompt")
            return Session(
                owner=owner,
                id=session_id,
                system_prompt=None if prompt is None else prompt.decode(),
                messages=messages,
                created_at=float(fields[b"created"]),
                last_active=float(fields[b"active"]),
            )
        except (KeyError, ValueError, msgspec.DecodeError) as exc:
            logger.warning("session_damaged", owner=owner, session=session_id, error=repr(exc))
            raise SessionDamagedError(owner, session_id, "its record in Redis cannot be read") from exc

    async def owners_of(self, session_id: str) -> list[str]:
        """Return the owners having a conversation with this id, sorted."""
        names = cast(
            "list[bytes]",
            await self._link.run(self._link.client.zrangebylex(f"{PREFIX}ids", f"[{session_id} ", f"({session_id}!")),
        )
        return [name.decode()[len(session_id) + 1 :] for name in names]

    async def append(
        self,
        owner: str,
        session_id: str,
        messages: list[StoredMessage],
        bounds: Bounds,
        *,
        caps: Caps,
        now: float,
    ) -> None:
        """Add messages and trim them to ``bounds`` (:func:`~minato.state.sessions.model.trim_plan`), then make
        room within ``caps``, atomically: the plan is made on what the conversation holds, and written only
        if it still holds that."""
        write = secrets.token_hex(8)
        for _ in range(WRITE_ATTEMPTS):
            head: list[bytes] = await self._link.run(self._read_plan(args=[PREFIX, owner, session_id]))
            version, first, held = (head[0].decode(), int(head[1]), [int(s) for s in head[3:]]) if head else ("", 1, [])
            drop, strip = trim_plan([*held, *(m.image_bytes for m in messages)], bounds)
            keep = first + drop
            after = first + len(held)  # the first new message's seq
            stripped = [str(seq) for seq in range(keep, keep + strip) if seq < after and held[seq - first]]
            args: list[str | bytes] = [PREFIX, owner, session_id, _number(now), _number(-now), self._ttl_ms]
            args += [str(caps.max_sessions), str(caps.max_per_key), version, str(keep), str(len(stripped)), *stripped]
            for seq, message in enumerate(messages, start=after):
                images = message.images if seq >= keep + strip else []
                text = _text_encoder.encode(msgspec.structs.replace(message, images=[]))
                args += [text, _text_encoder.encode(images), str(sum(map(len, images))), _number(message.at)]
            args.append(write)
            if await self._link.run(self._append(args=args)):
                return
        raise StateUnavailableError(
            f"the conversation '{session_id}' changed {WRITE_ATTEMPTS} times while its turn was being recorded; "
            "try again shortly"
        )

    async def set_system_prompt(
        self, owner: str, session_id: str, prompt: str | None, *, caps: Caps, now: float
    ) -> None:
        """Set or (``None``) remove a conversation's system prompt, creating it if needed, and make room
        within ``caps``."""
        args = [PREFIX, owner, session_id, _number(now), _number(-now), self._ttl_ms]
        args += [str(caps.max_sessions), str(caps.max_per_key)]
        args += ["0"] if prompt is None else ["1", prompt]
        await self._link.run(self._set_prompt(args=args))

    async def delete(self, owner: str, session_id: str) -> None:
        """Forget a conversation (idempotent), a damaged one too."""
        await self._link.run(self._delete(args=[PREFIX, owner, session_id]))

    async def list(self, owner: str | None, offset: int, limit: int) -> tuple[list[SessionSummary], int]:
        """Return a page of one owner's conversations (``None``: everyone's), most recently active first
        (ties by id, then owner), and their total count."""
        args = [PREFIX, owner or "", "0" if owner is None else "1", str(offset), str(limit)]
        flat: list[bytes] = await self._link.run(self._list(args=args))
        rows = [value.decode() for value in flat[1:]]
        page = [
            SessionSummary(
                owner=rows[i], id=rows[i + 1], message_count=int(rows[i + 3]), last_active=float(rows[i + 2])
            )
            for i in range(0, len(rows), 4)
        ]
        return page, int(flat[0])

    async def expire(self, idle_before: float, caps: Caps) -> int:
        """Drop conversations idle since before ``idle_before`` (and forget those that expired on their
        own), then those beyond ``caps``; return how many."""
        args = [PREFIX, _number(-idle_before), str(caps.max_sessions), str(caps.max_per_key)]
        dropped: int = await self._link.run(self._expire(args=args))
        return dropped

    async def enforce_image_budget(self, budget: int) -> int:
        """Drop the oldest images of the whole store (their text stays) until at most ``budget`` bytes are
        kept; return how many messages lost their images."""
        stripped: int = await self._link.run(self._image_budget(args=[PREFIX, str(budget)]))
        return stripped


class _Lease:
    """A held turn: renewed every third of the lease until released."""

    def __init__(self, locks: RedisTurnLocks, owner: str, session_id: str, token: str) -> None:
        self._locks = locks
        self._owner = owner
        self._session_id = session_id
        self._token = token
        self._renewal: asyncio.Task[None] | None = locks.renew(owner, session_id, token)

    def release(self) -> None:
        """Give the turn back (idempotent, never blocks, never raises): the renewal stops, and the lease is
        deleted, if it is still this turn's, by a task of its own."""
        if self._renewal is None:
            return
        renewal, self._renewal = self._renewal, None
        renewal.cancel()
        self._locks.unlock(self._owner, self._session_id, self._token)


class RedisTurnLocks:
    """One turn at a time per conversation across replicas: a lease per conversation in Redis."""

    def __init__(self, link: _Link, settings: Settings) -> None:
        self._link = link
        self._lease = settings.turn_lease
        self._lease_ms = math.ceil(settings.turn_lease * 1000)
        self._timeout = settings.redis_timeout
        self._take = link.script(_TAKE)
        self._renew = link.script(_RENEW)
        self._unlock = link.script(_UNLOCK)
        # Tasks kept here until done: the loop holds only weak references to tasks.
        self._renewals: set[asyncio.Task[None]] = set()
        self._releases: set[asyncio.Task[None]] = set()
        # Set when this process released a lease, so its own waiters try at once rather than at their next poll.
        self._released: dict[str, asyncio.Event] = {}

    async def acquire(self, owner: str, session_id: str) -> HeldTurn:
        """Wait until the conversation's lease is free (polling, or woken by a release of this process's),
        then hold it. Cancellable while it waits."""
        key = f"{PREFIX}turn:{_conv(owner, session_id)}"
        token = secrets.token_hex(16)
        delay = FIRST_POLL_SECONDS
        try:
            while not await self._link.run(self._take(keys=[key], args=[token, self._lease_ms])):
                released = self._released.setdefault(key, asyncio.Event())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(released.wait(), delay)
                delay = min(delay * 2, LAST_POLL_SECONDS)
        except BaseException:
            # A SET may have got through as its answer was lost (cancelled, timed out): give it back.
            self.unlock(owner, session_id, token)
            raise
        finally:
            self._released.pop(key, None)
        return _Lease(self, owner, session_id, token)

    def renew(self, owner: str, session_id: str, token: str) -> asyncio.Task[None]:
        """Start renewing a held lease; the task is the lease's to cancel."""
        return self._keep(self._renewals, self._renew_forever(owner, session_id, token))

    def unlock(self, owner: str, session_id: str, token: str) -> None:
        """Delete a lease if it is still ``token``'s, as a task of its own (no cancellation reaches it)."""
        self._keep(self._releases, self._unlock_once(owner, session_id, token))

    async def close(self) -> None:
        """Stop renewing (the leases left expire by themselves); let the releases under way finish."""
        for task in list(self._renewals):
            await cancel_and_wait(task)
        if self._releases:
            await asyncio.wait(list(self._releases), timeout=self._timeout)

    def _keep(self, tasks: set[asyncio.Task[None]], work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    async def _renew_forever(self, owner: str, session_id: str, token: str) -> None:
        key = f"{PREFIX}turn:{_conv(owner, session_id)}"
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                held = await self._link.run(self._renew(keys=[key], args=[token, self._lease_ms]))
            except StateUnavailableError:
                logger.warning("turn_lease_not_renewed", owner=owner, session=session_id, lease=self._lease)
                continue
            if not held:
                # It expired (or was taken): another turn may run alongside this one, which runs on.
                logger.error("turn_lease_lost", owner=owner, session=session_id, lease=self._lease)
                return

    async def _unlock_once(self, owner: str, session_id: str, token: str) -> None:
        key = f"{PREFIX}turn:{_conv(owner, session_id)}"
        try:
            await self._link.run(self._unlock(keys=[key], args=[token]))
        except StateUnavailableError:
            logger.warning("turn_lease_not_released", owner=owner, session=session_id, lease=self._lease)
        released = self._released.pop(key, None)
        if released is not None:
            released.set()


class RedisRateLimiter:
    """The token bucket of :class:`~minato.web.auth.RateLimiter`, one per key in Redis, for every replica."""

    def __init__(self, link: _Link) -> None:
        self._link = link
        self._bucket = link.script(_TOKEN_BUCKET)

    async def check(self, key: str, per_minute: int) -> float:
        """Take one request from ``key``'s bucket: return 0, or the seconds until one is there."""
        wait: bytes = await self._link.run(
            self._bucket(keys=[f"{PREFIX}rate:{key}"], args=[per_minute, RATE_BUCKET_TTL_MS])
        )
        return float(wait)


class RedisQuota:
    """The token quota of :class:`~minato.state.quota.TokenQuota` (a rolling 24 h in minute buckets) in Redis."""

    def __init__(self, link: _Link) -> None:
        self._link = link
        self._check = link.script(_QUOTA_CHECK)
        self._charge = link.script(_QUOTA_CHARGE)

    async def check(self, caller: Caller) -> Standing:
        """Where the key stands against its quota."""
        limit = caller.tokens_per_day
        if not limit:
            return Standing(0.0, 0)
        args = [limit, BUCKET_SECONDS, WINDOW_MINUTES]
        wait, total = await self._link.run(self._check(keys=[f"{PREFIX}quota:{caller.fingerprint}"], args=args))
        return Standing(float(wait), max(0, limit - int(total)))

    async def charge(self, caller: Caller, tokens: int) -> None:
        """Count ``tokens`` for a key with a quota (keys without one are not tracked)."""
        if not caller.tokens_per_day or tokens <= 0:
            return
        args = [tokens, BUCKET_SECONDS, WINDOW_MINUTES]
        await self._link.run(self._charge(keys=[f"{PREFIX}quota:{caller.fingerprint}"], args=args))


class RedisAffinity:
    """Which backend a conversation last used, forgotten with the conversation's idle expiry."""

    def __init__(self, link: _Link, settings: Settings) -> None:
        self._link = link
        self._ttl_ms = math.ceil(settings.session_ttl * 1000)

    async def get(self, key: str) -> str | None:
        """The backend's name the conversation ``key`` last used, if known."""
        name = cast("bytes | None", await self._link.run(self._link.client.get(f"{PREFIX}affinity:{key}")))
        return None if name is None else name.decode()

    async def put(self, key: str, backend: str) -> None:
        """Remember that conversation ``key`` used ``backend``."""
        await self._link.run(self._link.client.set(f"{PREFIX}affinity:{key}", backend, px=self._ttl_ms))


class RedisHealth:
    """Whether Redis answers; pinged every few seconds so ``minato_redis_up`` is current."""

    name: Final = "redis"

    def __init__(self, link: _Link) -> None:
        self._link = link

    async def ping(self) -> str | None:
        """``None`` when Redis answers, else why not."""
        try:
            await self._link.run(self._link.client.ping())
        except StateUnavailableError as exc:
            return exc.detail
        return None

    async def watch(self) -> None:
        """Ping forever (cancelled with the state)."""
        while True:
            await self.ping()
            await asyncio.sleep(HEALTH_INTERVAL_SECONDS)


@contextlib.asynccontextmanager
async def open_redis_state(settings: Settings, metrics: Metrics) -> AsyncIterator[SharedState]:
    """The shared state in Redis at ``settings.redis_url``, for as long as the context lasts.

    Redis need not answer at start-up: until it does, every request that needs it is a 503 and ``/ready``
    says why.
    """
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=MAX_CONNECTIONS,
        timeout=settings.redis_timeout,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        # One immediate retry on a broken connection (one left from before Redis restarted), none on a
        # timeout: a dead Redis fails the call at once, a hung one after one timeout.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis_errors.ConnectionError,)),
        client_name="minato",
    )
    client = Redis.from_pool(pool)
    link = _Link(client, settings, metrics)
    turns = RedisTurnLocks(link, settings)
    health = RedisHealth(link)
    watching = asyncio.get_running_loop().create_task(health.watch(), name="minato-redis-health")
    try:
        yield SharedState(
            store=RedisStore(link, settings),
            turns=turns,
            limiter=RedisRateLimiter(link),
            quota=RedisQuota(link),
            affinity=RedisAffinity(link, settings),
            health=health,
        )
    finally:
        await cancel_and_wait(watching)
        await turns.close()
        await client.aclose()


__all__ = [
    "RedisAffinity",
    "RedisHealth",
    "RedisQuota",
    "RedisRateLimiter",
    "RedisStore",
    "RedisTurnLocks",
    "open_redis_state",
]
