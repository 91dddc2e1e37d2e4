-- A room's history page, in one atomic read.
-- KEYS[1]: the room's key prefix P.
-- ARGV: limit, voter ('' for none), after (-1 for none), newest_if_incomplete (0/1),
--       alerts (0/1), epoch_candidate
-- -> msgpack [last_offset, epoch, complete, [[message, upvotes, answered]...],
--             [voted ids], [[message, upvotes]... alerts]] (message: the unpacked array)
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
