-- minato.state.usage: each key's tallies over the window, by model, from the hashes usage_add.lua keeps.
-- ARGV: key prefix, bucket seconds, window minutes, now or '', then the keys' names
-- -> for each key, in order: {model, requests, prompt, completion, model, ...}
local now = clock(ARGV[4])
local width, window = tonumber(ARGV[2]), tonumber(ARGV[3])
local minute = math.floor(now / width)
local oldest = minute - window
local slot = {r = 1, p = 2, c = 3}
local out = {}
for i = 5, #ARGV do
  local sums, order = {}, {}
  for hour = math.floor(oldest / 60), math.floor(minute / 60) do
    local flat = redis.call('HGETALL', ARGV[1] .. ARGV[i] .. ':' .. string.format('%d', hour))
    for j = 1, #flat, 2 do
      local at, kind, model = string.match(flat[j], '^(%d+) (%a) (.*)$')
      if at and tonumber(at) >= oldest and tonumber(at) <= minute then
        local sum = sums[model]
        if sum == nil then
          sum = {0, 0, 0}
          sums[model] = sum
          order[#order + 1] = model
        end
        sum[slot[kind]] = sum[slot[kind]] + tonumber(flat[j + 1])
      end
    end
  end
  local row = {}
  for _, model in ipairs(order) do
    local sum = sums[model]
    row[#row + 1] = model
    row[#row + 1] = sum[1]
    row[#row + 1] = sum[2]
    row[#row + 1] = sum[3]
  end
  out[#out + 1] = row
end
return out
