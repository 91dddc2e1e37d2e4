-- Count out every connection a dead node had counted in.
-- KEYS[1]: the room's key prefix P (keys: see presence_join.lua).
-- ARGV: node -> {users, [user ids that left]}
local p, node = KEYS[1], ARGV[1]
local gone = {}
local held = redis.call('HKEYS', p..'pk:'..node)
for _, field in ipairs(held) do
  local user = string.sub(field, 1, string.find(field, '\0', 1, true) - 1)
  if redis.call('HINCRBY', p..'pc', user, -1) <= 0 then
    if redis.call('HDEL', p..'pc', user) == 1 then gone[#gone + 1] = user end
    redis.call('HDEL', p..'pn', user)
  end
end
redis.call('DEL', p..'pk:'..node)
redis.call('SREM', p..'nodes', node)
return {redis.call('HLEN', p..'pc'), gone}
