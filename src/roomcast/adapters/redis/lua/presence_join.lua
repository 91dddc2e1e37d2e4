-- Count one connection of a user in; idempotent per (node, connection).
-- KEYS[1]: the room's key prefix P. P pk:<node>: hash "user NUL conn" -> 1 (what this
-- node counted in); P pc: hash user -> connections on every node; P pn: user -> name;
-- P nodes: set of nodes with connections counted in.
-- ARGV: node, user, conn, name, list_max -> {first (0/1), users, [user, name, ...]}
local p, node, user = KEYS[1], ARGV[1], ARGV[2]
local first = 0
if redis.call('HSETNX', p..'pk:'..node, user..'\0'..ARGV[3], 1) == 1 then
  redis.call('SADD', p..'nodes', node)
  if redis.call('HINCRBY', p..'pc', user, 1) == 1 then first = 1 end
end
redis.call('HSET', p..'pn', user, ARGV[4])
local users = {}
local list_max = tonumber(ARGV[5])
if list_max > 0 then
  local cursor = '0'
  repeat
    local page = redis.call('HSCAN', p..'pn', cursor, 'COUNT', 100)
    cursor = page[1]
    for i = 1, #page[2], 2 do
      if #users >= 2 * list_max then break end
      users[#users + 1] = page[2][i]
      users[#users + 1] = page[2][i + 1]
    end
  until cursor == '0' or #users >= 2 * list_max
end
return {first, redis.call('HLEN', p..'pc'), users}
