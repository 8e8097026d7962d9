-- KEYS: a key's places; ARGV: a token, lease ms[, now] -> 1 if the token's place was still there (and is
-- renewed), else 0
local now = clock(ARGV[3])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', string.format('%.17g', now + tonumber(ARGV[2]) / 1000), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
