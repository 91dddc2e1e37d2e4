-- Count one connection of a user out; idempotent: a connection not counted in (left
-- already, or purged) changes nothing.
-- KEYS[1]: the room's key prefix P (keys: see presence_join.lua).
-- ARGV: node, user, conn -> {last (0/1), users}
local p, node, user = KEYS[1], ARGV[1], ARGV[2]
if redis.call('HDEL', p..'pk:'..node, user..'\0'..ARGV[3]) == 0 then
  return {0, redis.call('HLEN', p..'pc')}
end
local last = 0
if redis.call('HINCRBY', p..'pc', user, -1) <= 0 then
  redis.call('HDEL', p..'pc', user)
  redis.call('HDEL', p..'pn', user)
  last = 1
end
return {last, redis.call('HLEN', p..'pc')}
