-- KEYS: a lease; ARGV: its token, lease ms -> 1 if still held (and renewed), else 0
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
