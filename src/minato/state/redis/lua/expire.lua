-- ARGV: prefix, score of the idle limit, max sessions, max per key -> how many conversations were dropped
local dropped = 0
-- Conversations kept by a Minato from before the holders index: index their owners, once.
if redis.call('SET', P .. 'holders:built', '1', 'NX') then
  local owners = {}
  for _, name in ipairs(redis.call('ZRANGE', P .. 'active', 0, -1)) do
    local owner = split(name)
    owners[owner] = true
  end
  for owner in pairs(owners) do reindex(owner) end
end
for _, name in ipairs(redis.call('ZRANGE', P .. 'active', '(' .. ARGV[2], '+inf', 'BYSCORE')) do
  local owner, id = split(name)
  drop(owner, id)
  dropped = dropped + 1
end
-- Conversations whose keys expired on their own, least recently active first, up to the first still there.
while true do
  local last = redis.call('ZRANGE', P .. 'active', -1, -1)
  if #last == 0 then break end
  local owner, id = split(last[1])
  if redis.call('EXISTS', conv_key(owner, id)) == 1 then break end
  drop(owner, id)
  dropped = dropped + 1
end
local max_per_key = tonumber(ARGV[4])
for _, member in ipairs(redis.call('ZRANGE', P .. 'holders', '-inf', '(' .. -max_per_key, 'BYSCORE')) do
  dropped = dropped + cap_owner(string.match(member, '^%S+ (.*)$'), max_per_key, nil)
end
return dropped + cap_store(tonumber(ARGV[3]), nil, nil)
