-- limits.lua: a queue's limits and how they stand now.  Read only.
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  now (ms)
--
-- Returns, in order: concurrency, rate, per (ms) (each '' when not set),
-- per_key (1/0), running jobs, starts in the current rate window (of the
-- queue; 0 with per_key), when the queue's rate window opens a slot again
-- (ms, -1 unless it is full), throttled since (ms, -1 when not held back),
-- throttled in all before (ms), keys with queued jobs, keys held back by
-- their rate, paused (1/0).
local now = tonumber(ARGV[1])
local f = redis.call('HMGET', prefix .. 'limits', 'concurrency', 'rate', 'per',
  'per_key')
local rate = tonumber(f[2])
local per = tonumber(f[3])
local in_window = 0
local next_slot = -1
if rate and per and f[4] ~= '1' then
  local window = prefix .. 'window'
  in_window = redis.call('ZCOUNT', window, '(' .. (now - per), '+inf')
  if in_window >= rate then
    local oldest = redis.call('ZRANGEBYSCORE', window, '(' .. (now - per),
      '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    next_slot = tonumber(oldest[2]) + per
  end
end
local throttle = redis.call('HMGET', prefix .. 'throttle', 'since', 'total')
return {f[1] or '', f[2] or '', f[3] or '', f[4] == '1' and 1 or 0,
  redis.call('ZCARD', prefix .. 'running'), in_window, next_slot,
  tonumber(throttle[1] or -1), tonumber(throttle[2] or 0),
  redis.call('HLEN', prefix .. 'lkeys'), redis.call('ZCARD', prefix .. 'lwait'),
  redis.call('EXISTS', prefix .. 'paused')}
