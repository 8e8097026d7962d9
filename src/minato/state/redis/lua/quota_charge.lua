-- minato.state.windows.QuotaWindow.charge: the tokens go in the bucket of the minute (the buckets out of
-- the window are dropped by the next check, and all of them with the key once it is idle for the window).
-- KEYS: the key's buckets; ARGV: tokens, bucket seconds, window minutes[, now]
local now = clock(ARGV[4])
local width, window = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('HINCRBY', KEYS[1], string.format('%d', math.floor(now / width)), ARGV[1])
redis.call('EXPIRE', KEYS[1], (window + 2) * width)
