-- A key's places: a sorted set, member = a holder's token, score = when its place expires (clock.lua's time).
-- KEYS: the key's places; ARGV: a token, the key's bound, lease ms[, now] -> 1 if the token holds a place
-- now (taken, or taken already by this call, sent again after its connection broke), else 0
local now = clock(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now))
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], string.format('%.17g', now + tonumber(ARGV[3]) / 1000), ARGV[1])
-- Every place expires within a lease of now: so does the set, once its last place is neither renewed nor taken.
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
