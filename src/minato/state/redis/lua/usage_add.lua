-- minato.state.usage: count a batch in the minute of Redis's clock, in one hash per key and hour (field
-- "<minute> <r|p|c> <model>"), each hash forgotten once its last minute has left the window.
-- ARGV: key prefix, bucket seconds, window minutes, now or '', then (key, model, requests, prompt,
-- completion) for each entry of the batch
local now = clock(ARGV[4])
local width, window = tonumber(ARGV[2]), tonumber(ARGV[3])
local minute = math.floor(now / width)
local hour = math.floor(minute / 60)
local ttl = math.max(1, math.ceil((hour * 60 + 60 + window + 1) * width - now))
for i = 5, #ARGV, 5 do
  local name = ARGV[1] .. ARGV[i] .. ':' .. string.format('%d', hour)
  local at = string.format('%d', minute) .. ' '
  redis.call('HINCRBY', name, at .. 'r ' .. ARGV[i + 1], ARGV[i + 2])
  redis.call('HINCRBY', name, at .. 'p ' .. ARGV[i + 1], ARGV[i + 3])
  redis.call('HINCRBY', name, at .. 'c ' .. ARGV[i + 1], ARGV[i + 4])
  redis.call('EXPIRE', name, ttl)
end
