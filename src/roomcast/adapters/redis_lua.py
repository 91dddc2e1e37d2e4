"""The Lua scripts of the Redis store. Each runs atomically inside Redis.

Every script gets one key, the room's key prefix `P` = `<prefix>{<room>}:`, and builds
the room's other key names from it; the hash tag `{<room>}` puts all of them (and the
room's channel) in one Redis Cluster slot. Keys of a room:

- `P seq`     last offset (INCR)           - `P epoch`   the room history's identity
- `P log`     zset offset -> chat id       - `P m`       hash chat id -> packed message
- `P up`      hash chat id -> upvotes      - `P v:<id>`  set of voters of one message
- `P ans`     set of answered chat ids     - `P al`      set of chat ids alerted
- `P cm`      hash user NUL client id -> chat id (retries)
- `P evicted` highest offset dropped by the size or age bound
- `P cd:<user>` cooldown marker (PX)       - `P mutes`   hash user -> muted until (ms)
- `P info`    room settings                - `P ev`      the room's pub/sub channel
- `P pc`, `P pn`, `P pk:<node>`, `P nodes`: presence (see PRESENCE_*)

A packed message is msgpack `[chat_id, offset, user, name, text, created_ms, client_id]`.
"""

from __future__ import annotations

_EVICT = """
local function evict(p, id)
  local packed = redis.call('HGET', p..'m', id)
  if packed then
    local msg = cmsgpack.unpack(packed)
    if msg[7] ~= '' then redis.call('HDEL', p..'cm', msg[3]..'\\0'..msg[7]) end
  end
  redis.call('HDEL', p..'m', id)
  redis.call('ZREM', p..'log', id)
  redis.call('HDEL', p..'up', id)
  redis.call('SREM', p..'ans', id)
  redis.call('SREM', p..'al', id)
  redis.call('DEL', p..'v:'..id)
end
"""

# ARGV: room, user, name, text, client_id, now_ms, chat_id, cooldown_ms, check_mute,
#       history_max, max_age_ms, epoch_candidate, publish command
# -> {0, packed, duplicate, upvotes, answered} | {1, cooldown left ms} | {2, muted until}
#    | {3}: the chat id is taken (the id counter was lost with Redis's data)
APPEND = (
    _EVICT
    + """
local p = KEYS[1]
local user, name, text, cid = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = tonumber(ARGV[6])
redis.call('SET', p..'epoch', ARGV[12], 'NX')
if cid ~= '' then
  local seen = redis.call('HGET', p..'cm', user..'\\0'..cid)
  if seen then
    local packed = redis.call('HGET', p..'m', seen)
    if packed then
      local up = tonumber(redis.call('HGET', p..'up', seen) or '0')
      return {0, packed, 1, up, redis.call('SISMEMBER', p..'ans', seen)}
    end
  end
end
if ARGV[9] == '1' then
  local until_ms = redis.call('HGET', p..'mutes', user)
  if until_ms and tonumber(until_ms) > now then return {2, until_ms} end
end
local cooldown = tonumber(ARGV[8])
if cooldown > 0 then
  local left = redis.call('PTTL', p..'cd:'..user)
  if left > 0 then return {1, left} end
end
local id = ARGV[7]
if redis.call('HEXISTS', p..'m', id) == 1 then return {3} end
local offset = redis.call('INCR', p..'seq')
local packed = cmsgpack.pack({id, offset, user, name, text, now, cid})
redis.call('HSET', p..'m', id, packed)
redis.call('ZADD', p..'log', offset, id)
if cid ~= '' then redis.call('HSET', p..'cm', user..'\\0'..cid, id) end
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
redis.call(ARGV[13], p..'ev', 'm'..packed)
return {0, packed, 0, 0, 0}
"""
)

# ARGV: chat_id, user, 1 (vote) or 0 (withdraw)
# -> {-1} unknown | {0} nothing changed | {1, packed, upvotes, answered}
VOTE = """
local p, id, user = KEYS[1], ARGV[1], ARGV[2]
local packed = redis.call('HGET', p..'m', id)
if not packed then return {-1} end
local n
if ARGV[3] == '1' then
  if redis.call('SADD', p..'v:'..id, user) == 0 then return {0} end
  n = redis.call('HINCRBY', p..'up', id, 1)
else
  if redis.call('SREM', p..'v:'..id, user) == 0 then return {0} end
  n = redis.call('HINCRBY', p..'up', id, -1)
end
return {1, packed, n, redis.call('SISMEMBER', p..'ans', id)}
"""

# ARGV: chat_id, action ('answer' | 'delete' | 'claim')
# -> {-1} unknown | {1, packed, upvotes, answered, claimed_now}
MODERATE = (
    _EVICT
    + """
local p, id = KEYS[1], ARGV[1]
local packed = redis.call('HGET', p..'m', id)
if not packed then return {-1} end
local up = tonumber(redis.call('HGET', p..'up', id) or '0')
if ARGV[2] == 'answer' then
  redis.call('SADD', p..'ans', id)
  return {1, packed, up, 1, 0}
elseif ARGV[2] == 'delete' then
  evict(p, id)
  return {1, packed, up, 0, 0}
end
local first = redis.call('SADD', p..'al', id)
return {1, packed, up, redis.call('SISMEMBER', p..'ans', id), first}
"""
)

# ARGV: limit, voter ('' for none), after (-1 for none), newest_if_incomplete (0/1),
#       alerts (0/1), epoch_candidate
# -> msgpack [last_offset, epoch, complete, [[message, upvotes, answered]...],
#             [voted ids], [[message, upvotes]... alerts]] (message: the unpacked array)
HISTORY = """
local p = KEYS[1]
local limit, voter, after = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
redis.call('SET', p..'epoch', ARGV[6], 'NX')
local epoch = redis.call('GET', p..'epoch')
local last = tonumber(redis.call('GET', p..'seq') or '0')
local complete = true
local ids = {}
local function newest()
  if limit <= 0 then return {} end
  return redis.call('ZRANGE', p..'log', -limit, -1)
end
if after < 0 then
  ids = newest()
else
  ids = redis.call('ZRANGEBYSCORE', p..'log', '('..after, '+inf', 'LIMIT', 0, limit + 1)
  local evicted = tonumber(redis.call('GET', p..'evicted') or '0')
  complete = after >= evicted and #ids <= limit
  if complete or ARGV[4] ~= '1' then
    if #ids > limit then table.remove(ids) end
  else
    ids = newest()
  end
end
local msgs, voted = {}, {}
for i, id in ipairs(ids) do
  local up = tonumber(redis.call('HGET', p..'up', id) or '0')
  local msg = cmsgpack.unpack(redis.call('HGET', p..'m', id))
  msgs[i] = {msg, up, redis.call('SISMEMBER', p..'ans', id)}
  if voter ~= '' and redis.call('SISMEMBER', p..'v:'..id, voter) == 1 then
    voted[#voted + 1] = id
  end
end
local alerts = {}
if ARGV[5] == '1' then
  local offsets = {}
  for _, id in ipairs(redis.call('SMEMBERS', p..'al')) do
    local packed = redis.call('HGET', p..'m', id)
    if packed and redis.call('SISMEMBER', p..'ans', id) == 0 then
      local up = tonumber(redis.call('HGET', p..'up', id) or '0')
      alerts[#alerts + 1] = {cmsgpack.unpack(packed), up}
    end
  end
  table.sort(alerts, function(a, b) return a[1][2] < b[1][2] end)
end
return cmsgpack.pack({last, epoch, complete, msgs, voted, alerts})
"""

# ARGV: node, user, name, list_max -> {first (0/1), count, [user, name, ...]}
PRESENCE_JOIN = """
local p, node, user = KEYS[1], ARGV[1], ARGV[2]
redis.call('HINCRBY', p..'pk:'..node, user, 1)
redis.call('SADD', p..'nodes', node)
local c = redis.call('HINCRBY', p..'pc', user, 1)
redis.call('HSET', p..'pn', user, ARGV[3])
local users = {}
local list_max = tonumber(ARGV[4])
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
return {c == 1 and 1 or 0, redis.call('HLEN', p..'pc'), users}
"""

# ARGV: node, user -> {last (0/1), count}
PRESENCE_LEAVE = """
local p, node, user = KEYS[1], ARGV[1], ARGV[2]
local mine = redis.call('HINCRBY', p..'pk:'..node, user, -1)
if mine <= 0 then redis.call('HDEL', p..'pk:'..node, user) end
if mine < 0 then return {0, redis.call('HLEN', p..'pc')} end
local c = redis.call('HINCRBY', p..'pc', user, -1)
local last = 0
if c <= 0 then
  redis.call('HDEL', p..'pc', user)
  redis.call('HDEL', p..'pn', user)
  last = 1
end
return {last, redis.call('HLEN', p..'pc')}
"""

# ARGV: node whose connections are gone -> {count, [user ids that left]}
PRESENCE_PURGE = """
local p, node = KEYS[1], ARGV[1]
local gone = {}
local held = redis.call('HGETALL', p..'pk:'..node)
for i = 1, #held, 2 do
  local user, n = held[i], tonumber(held[i + 1])
  local c = redis.call('HINCRBY', p..'pc', user, -n)
  if c <= 0 then
    redis.call('HDEL', p..'pc', user)
    redis.call('HDEL', p..'pn', user)
    gone[#gone + 1] = user
  end
end
redis.call('DEL', p..'pk:'..node)
redis.call('SREM', p..'nodes', node)
return {redis.call('HLEN', p..'pc'), gone}
"""

# KEYS[1]: the chat id counter. ARGV: block size, floor.
# A counter that does not exist (new, or lost with Redis's data) starts at the floor,
# the time in ms x 1,000: ids handed out after a loss stay above every earlier id (as
# long as fewer than 1,000 were handed out per ms on average), and below 2**53 until
# the year 2255.
RESERVE_IDS = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[2]) end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""
