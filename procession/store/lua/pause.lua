-- pause.lua: pause or resume a queue.
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  'pause' or 'resume'
-- ARGV[2]  the wake channel   ARGV[3]  the queue's name
--
-- A paused queue still takes pushes but hands out no jobs.  Resuming wakes
-- the workers waiting on it.  Returns 1 when the state changed, else 0.
if ARGV[1] == 'pause' then
  return redis.call('SET', prefix .. 'paused', '1', 'NX') and 1 or 0
end
local changed = redis.call('DEL', prefix .. 'paused')
if changed == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return changed
