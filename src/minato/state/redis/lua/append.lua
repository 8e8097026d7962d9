-- ARGV: prefix, owner, id, now, score, ttl, max sessions, max per key, expected version ('' for none), first
-- seq kept, count of seqs to strip, those seqs, then per new message: text, images, image bytes, time; last,
-- the write's id. Returns 0 if the conversation changed since its plan was read (nothing written), else 1 (also
-- when this write was already made: a call sent again after its connection broke).
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
