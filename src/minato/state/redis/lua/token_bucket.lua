-- minato.state.windows.take_one (or, with ARGV[4] = '1', peek: nothing taken, nothing written), step for step.
-- KEYS: the bucket; ARGV: depth (= per minute), ttl in ms[, now][, peek]
-- -> {'0' or the seconds until a request is there, the tokens the bucket holds then}
local now = clock(ARGV[3])
local depth = tonumber(ARGV[1])
local rate = depth / 60
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or depth
local last = tonumber(state[2]) or now
tokens = math.min(depth, tokens + math.max(0, now - last) * rate)
local wait = 0
if ARGV[4] == '1' then
  if tokens < 1 then wait = (1 - tokens) / rate end
  return {string.format('%.17g', wait), string.format('%.17g', tokens)}
end
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {string.format('%.17g', wait), string.format('%.17g', tokens)}
