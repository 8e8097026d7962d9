-- KEYS: a lease; ARGV: its token -> 1 if it was still held (and is released), else 0
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
