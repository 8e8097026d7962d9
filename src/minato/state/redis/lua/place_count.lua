-- KEYS: a key's places; ARGV: [now] -> how many are live (expire after now)
local now = clock(ARGV[1])
return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%.17g', now), '+inf')
