-- minato.state.windows.QuotaWindow.standing, step for step: drop the buckets out of the window, then the
-- wait until the oldest buckets' expiry brings the total under the limit.
-- KEYS: the key's buckets (hash minute -> tokens); ARGV: tokens per day, bucket seconds, window minutes[, now]
-- -> {'0' or seconds to wait, tokens counted in the window, seconds until they have all left it ('0': none)}
local now = clock(ARGV[4])
local limit, width, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local minute = math.floor(now / width)
local flat = redis.call('HGETALL', KEYS[1])
local buckets, total, newest = {}, 0, nil
for i = 1, #flat, 2 do
  local at, tokens = tonumber(flat[i]), tonumber(flat[i + 1])
  if at < minute - window then
    redis.call('HDEL', KEYS[1], flat[i])
  else
    buckets[#buckets + 1] = {at, tokens}
    total = total + tokens
    if newest == nil or at > newest then newest = at end
  end
end
local resets = '0'
if newest ~= nil then resets = string.format('%.17g', (newest + window + 1) * width - now) end
if total < limit then return {'0', total, resets} end
table.sort(buckets, function(a, b) return a[1] < b[1] end)
local freed = 0
for _, bucket in ipairs(buckets) do
  freed = freed + bucket[2]
  if total - freed < limit then
    return {string.format('%.17g', (bucket[1] + window + 1) * width - now), total, resets}
  end
end
return {'0', total, resets}
