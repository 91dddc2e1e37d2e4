-- Count or withdraw one user's vote on a message.
-- KEYS[1]: the room's key prefix P. ARGV: chat_id, user, 1 (vote) or 0 (withdraw)
-- -> {UNKNOWN} | {UNCHANGED} | {CHANGED, packed, upvotes, answered}
local p, id, user = KEYS[1], ARGV[1], ARGV[2]
local packed = redis.call('HGET', p..'m', id)
if not packed then return {UNKNOWN} end
local n
if ARGV[3] == '1' then
  if redis.call('SADD', p..'v:'..id, user) == 0 then return {UNCHANGED} end
  n = redis.call('HINCRBY', p..'up', id, 1)
else
  if redis.call('SREM', p..'v:'..id, user) == 0 then return {UNCHANGED} end
  n = redis.call('HINCRBY', p..'up', id, -1)
end
return {CHANGED, packed, n, redis.call('SISMEMBER', p..'ans', id)}
