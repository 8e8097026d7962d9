-- The time the limit scripts count in: Redis's own (TIME), so the replicas' clocks do not matter. Minato
-- never passes `given`; the tests that check these scripts against minato.state.windows do.
local function clock(given)
  if given and given ~= '' then return tonumber(given) end
  local time = redis.call('TIME')
  return tonumber(time[1]) + tonumber(time[2]) / 1000000
end
