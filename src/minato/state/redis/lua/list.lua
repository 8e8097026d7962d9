-- ARGV: prefix, owner ('' for everyone's listing with ARGV[3] '0'), '1' for one owner's, offset, limit
-- -> {total, then per conversation: owner, id, last active, message count}
local owner, one = ARGV[2], ARGV[3] == '1'
local index = one and (P .. 'o:' .. owner) or (P .. 'active')
local total = redis.call('ZCARD', index)
local offset, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local entries = {}
if limit > 0 then entries = redis.call('ZRANGE', index, offset, offset + limit - 1) end
local out = {''}
for _, entry in ipairs(entries) do
  local o, id = owner, entry
  if not one then o, id = split(entry) end
  local head = redis.call('HMGET', conv_key(o, id), 'active', 'first', 'next')
  if head[1] then
    out[#out + 1] = o
    out[#out + 1] = id
    out[#out + 1] = head[1]
    out[#out + 1] = tostring(tonumber(head[3]) - tonumber(head[2]))
  else
    total = total - 1  -- expired on its own; the next sweep forgets it
  end
end
out[1] = tostring(total)
return out
