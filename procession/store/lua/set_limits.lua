-- set_limits.lua: set (replace) a queue's limits (docs/limits.rst).
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  the wake channel   ARGV[2]  the queue's name
-- ARGV[3]  concurrency ('' for none)
-- ARGV[4]  rate: jobs started per window ('' for none)
-- ARGV[5]  the window, ms ('' when no rate)
-- ARGV[6]  '1' when the limits apply to each limit_key apart, else '0'
-- ARGV[7]  the most queued jobs to index when per_key changes
--
-- The limits hash stays once set ('set'), so that jobs started under a
-- per_key limit free their key's slot even after the limits change.
-- Switching per_key indexes the queued jobs by key (on) or drops that
-- index (off), in this call: refused, changing nothing, while more than
-- ARGV[7] jobs are queued.  Keys held back go back into the rotation, and
-- the consumers are woken, since the new limits may allow more.
-- Returns {'ok', 0} or {'too_many_queued', <queued jobs>}.
local limits = prefix .. 'limits'
local keys = prefix .. 'lkeys'
local ready = prefix .. 'lready'
local waiting = prefix .. 'lwait'
local was_per_key = redis.call('HGET', limits, 'per_key') == '1'
local per_key = ARGV[6] == '1'
if per_key ~= was_per_key then
  local queued = redis.call('ZCARD', prefix .. 'queued')
  if queued > tonumber(ARGV[7]) then
    return {'too_many_queued', queued}
  end
  for _, lk in ipairs(redis.call('HKEYS', keys)) do
    redis.call('DEL', prefix .. 'kq:' .. lk)
  end
  redis.call('DEL', keys, ready, waiting)
  if per_key then
    local members = redis.call('ZRANGE', prefix .. 'queued', 0, -1,
      'WITHSCORES')
    for i = 1, #members, 2 do
      local id = string.sub(members[i], 17)
      local lk = redis.call('HGET', jobkey(id), 'limit_key') or ''
      redis.call('ZADD', prefix .. 'kq:' .. lk, members[i + 1], members[i])
      if redis.call('HSETNX', keys, lk, 'r') == 1 then
        redis.call('RPUSH', ready, lk)
      end
    end
  end
elseif per_key then
  -- Keys held back under the old limits are looked at again.
  local states = redis.call('HGETALL', keys)
  for i = 1, #states, 2 do
    if states[i + 1] ~= 'r' then
      redis.call('HSET', keys, states[i], 'r')
      redis.call('RPUSH', ready, states[i])
    end
  end
  redis.call('DEL', waiting)
end
redis.call('HSET', limits, 'set', '1', 'per_key', per_key and '1' or '0',
  'channel', ARGV[1], 'queue', ARGV[2])
local fields = {'concurrency', 'rate', 'per'}
for i, name in ipairs(fields) do
  local value = ARGV[2 + i]
  if value == '' then
    redis.call('HDEL', limits, name)
  else
    redis.call('HSET', limits, name, value)
  end
end
if not ARGV[4] or ARGV[4] == '' then
  redis.call('DEL', prefix .. 'window')
end
wake(ARGV[1], ARGV[2])
return {'ok', 0}
