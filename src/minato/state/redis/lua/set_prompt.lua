-- ARGV: prefix, owner, id, now, score, ttl, max sessions, max per key, '1' and the prompt, or '0' to remove it.
local key = touch(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
if ARGV[9] == '1' then redis.call('HSET', key, 'prompt', ARGV[10]) else redis.call('HDEL', key, 'prompt') end
cap(ARGV[2], ARGV[3], tonumber(ARGV[7]), tonumber(ARGV[8]))
