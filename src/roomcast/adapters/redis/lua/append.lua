-- Append a message to a room's history; with ARGV[13] set, publish it too, atomically.
-- KEYS[1]: the room's key prefix P (see scripts.py for the room's keys).
-- ARGV: room, user, name, text, client_id, now_ms, chat_id, cooldown_ms, check_mute,
--       history_max, max_age_ms, epoch_candidate, publish command ('' for none)
-- -> {OK, packed, duplicate, upvotes, answered, epoch} | {COOLDOWN, ms left}
--    | {MUTED, muted until} | {ID_TAKEN}: the chat id exists (the id counter was lost)
local p = KEYS[1]
local user, name, text, cid = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = tonumber(ARGV[6])
redis.call('SET', p..'epoch', ARGV[12], 'NX')
if cid ~= '' then
  local seen = redis.call('HGET', p..'cm', user..'\0'..cid)
  if seen then
    local packed = redis.call('HGET', p..'m', seen)
    if packed then
      local up = tonumber(redis.call('HGET', p..'up', seen) or '0')
      local epoch = redis.call('GET', p..'epoch')
      return {OK, packed, 1, up, redis.call('SISMEMBER', p..'ans', seen), epoch}
    end
  end
end
if ARGV[9] == '1' then
  local until_ms = redis.call('HGET', p..'mutes', user)
  if until_ms and tonumber(until_ms) > now then return {MUTED, until_ms} end
end
local cooldown = tonumber(ARGV[8])
if cooldown > 0 then
  local left = redis.call('PTTL', p..'cd:'..user)
  if left > 0 then return {COOLDOWN, left} end
end
local id = ARGV[7]
if redis.call('HEXISTS', p..'m', id) == 1 then return {ID_TAKEN} end
local offset = redis.call('INCR', p..'seq')
local packed = cmsgpack.pack({id, offset, user, name, text, now, cid})
redis.call('HSET', p..'m', id, packed)
redis.call('ZADD', p..'log', offset, id)
if cid ~= '' then redis.call('HSET', p..'cm', user..'\0'..cid, id) end
if cooldown > 0 then redis.call('SET', p..'cd:'..user, '1', 'PX', cooldown) end
local evicted = 0
local count = redis.call('ZCARD', p..'log')
while count > tonumber(ARGV[10]) do
  local oldest = redis.call('ZRANGE', p..'log', 0, 0, 'WITHSCORES')
  evict(p, oldest[1])
  evicted = tonumber(oldest[2])
  count = count - 1
end
local max_age = tonumber(ARGV[11])
if max_age > 0 then
  for _ = 1, 100 do
    local oldest = redis.call('ZRANGE', p..'log', 0, 0, 'WITHSCORES')
    if #oldest == 0 then break end
    local msg = cmsgpack.unpack(redis.call('HGET', p..'m', oldest[1]))
    if msg[6] >= now - max_age then break end
    evict(p, oldest[1])
    evicted = tonumber(oldest[2])
  end
end
if evicted > 0 then
  local before = tonumber(redis.call('GET', p..'evicted') or '0')
  if evicted > before then redis.call('SET', p..'evicted', evicted) end
end
local epoch = redis.call('GET', p..'epoch')
if ARGV[13] ~= '' then
  -- The publication, in the inter-node format (roomcast.core.wire, version 1).
  local pub = cmsgpack.pack({epoch, id, offset, user, name, text, now, cid})
  redis.call(ARGV[13], p..'ev', '\1m'..pub)
end
return {OK, packed, 0, 0, 0, epoch}
