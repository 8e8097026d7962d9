-- What the conversation scripts share (loaded before each of them): ARGV[1] is always the key prefix.
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
