-- Shared by append.lua and moderate.lua (prepended when loaded): drop one message.
local function evict(p, id)
  local packed = redis.call('HGET', p..'m', id)
  if packed then
    local msg = cmsgpack.unpack(packed)
    if msg[7] ~= '' then redis.call('HDEL', p..'cm', msg[3]..'\0'..msg[7]) end
  end
  redis.call('HDEL', p..'m', id)
  redis.call('ZREM', p..'log', id)
  redis.call('HDEL', p..'up', id)
  redis.call('SREM', p..'ans', id)
  redis.call('SREM', p..'al', id)
  redis.call('DEL', p..'v:'..id)
end
