-- servers.lua: the registry of live procession servers.  Not a queue
-- script: it runs without common.lua, on the registry's key alone.
--
-- KEYS[1]  the registry: a zset, member a server's id, score the time
--          (ms, by Redis's clock) of its last heartbeat
-- ARGV[1]  the action:
--   'beat'    ARGV[2] the server's id: record a heartbeat now.  Returns
--             the time recorded.
--   'lost'    ARGV[2] the timeout (ms): the servers whose last heartbeat
--             is older than that, oldest first.
--   'forget'  ARGV[2] the server's id, ARGV[3] the timeout (ms): remove
--             the server only if its last heartbeat is still older than
--             that (it may have come back meanwhile).  Returns 1 when
--             removed, else 0.
--
-- Times come from Redis (TIME), not from the servers, so clocks that
-- differ between hosts cannot make a live server look lost.  (Redis 5 and
-- later replicate a script's effects, so TIME before a write is allowed.)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local action = ARGV[1]
if action == 'beat' then
  redis.call('ZADD', KEYS[1], now, ARGV[2])
  return now
elseif action == 'lost' then
  return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf',
    '(' .. (now - tonumber(ARGV[2])))
elseif action == 'forget' then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[2])
  if score and tonumber(score) < now - tonumber(ARGV[3]) then
    return redis.call('ZREM', KEYS[1], ARGV[2])
  end
  return 0
end
return redis.error_reply('servers: unknown action ' .. tostring(action))
