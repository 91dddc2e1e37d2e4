-- Mark a message answered, delete it, or claim its admin alert.
-- KEYS[1]: the room's key prefix P. ARGV: chat_id, action ('answer' | 'delete' | 'claim')
-- -> {UNKNOWN} | {CHANGED, packed, upvotes, answered, claimed_now}
local p, id = KEYS[1], ARGV[1]
local packed = redis.call('HGET', p..'m', id)
if not packed then return {UNKNOWN} end
local up = tonumber(redis.call('HGET', p..'up', id) or '0')
if ARGV[2] == 'answer' then
  redis.call('SADD', p..'ans', id)
  return {CHANGED, packed, up, 1, 0}
elseif ARGV[2] == 'delete' then
  evict(p, id)
  return {CHANGED, packed, up, 0, 0}
end
local first = redis.call('SADD', p..'al', id)
return {CHANGED, packed, up, redis.call('SISMEMBER', p..'ans', id), first}
