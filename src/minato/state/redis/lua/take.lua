-- KEYS: a lease; ARGV: a token, lease ms -> 1 if the lease is the token's now (taken, or taken already by
-- this call, sent again after its connection broke), else 0
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
