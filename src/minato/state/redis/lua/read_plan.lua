-- ARGV: prefix, owner, id -> {} or {v, first, next, image bytes of each message}
local key = conv_key(ARGV[2], ARGV[3])
local head = redis.call('HMGET', key, 'v', 'first', 'next')
if not head[1] then return {} end
local out = {head[1], head[2], head[3]}
for seq = tonumber(head[2]), tonumber(head[3]) - 1 do
  out[#out + 1] = redis.call('HGET', key, 's' .. seq) or '0'
end
return out
