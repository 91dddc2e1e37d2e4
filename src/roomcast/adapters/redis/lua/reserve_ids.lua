-- KEYS[1]: the chat id counter. ARGV: block size, floor.
-- A counter that does not exist (new, or lost with Redis's data) starts at the floor,
-- the time in ms x 1,000: ids handed out after a loss stay above every earlier id (as
-- long as fewer than 1,000 were handed out per ms on average), and below 2**53 until
-- the year 2255.
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[2]) end
return redis.call('INCRBY', KEYS[1], ARGV[1])
