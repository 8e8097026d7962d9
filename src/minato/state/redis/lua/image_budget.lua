-- ARGV: prefix, budget -> how many messages lost their images
local total = tonumber(redis.call('GET', P .. 'image_bytes') or '0')
local budget = tonumber(ARGV[2])
local stripped = 0
while total > budget do
  local oldest = redis.call('ZRANGE', P .. 'images', 0, 0)
  if #oldest == 0 then
    redis.call('SET', P .. 'image_bytes', 0)
    break
  end
  local member = oldest[1]
  local seq, size, id, owner = string.match(member, '^(%d+) (%d+) (%S+) (.*)$')
  local key = conv_key(owner, id)
  if redis.call('HGET', key, 's' .. seq) == size then
    redis.call('HDEL', key, 'i' .. seq, 's' .. seq)
    redis.call('HINCRBY', key, 'v', 1)
    stripped = stripped + 1
  end
  forget_image(member)
  redis.call('SREM', images_key(owner, id), member)
  total = total - tonumber(size)
end
return stripped
