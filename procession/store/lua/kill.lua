-- kill.lua: send a job that has not finished straight to dead.
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  now (ms)           ARGV[2]  the job's id
--
-- Works on waiting, queued, scheduled, retrying and running jobs; a running job's
-- lease is revoked.  Returns the former state, or 'not_found' or
-- 'illegal_state'.
local now = tonumber(ARGV[1])
local id = ARGV[2]
local state = redis.call('HGET', jobkey(id), 'state')
if not state then
  return 'not_found'
end
if state ~= 'waiting' and state ~= 'queued' and state ~= 'scheduled' and state ~= 'retrying'
    and state ~= 'running' then
  return 'illegal_state'
end
unlist(id, state)
make_dead(id, now)
wake_freed()  -- limits: a freed slot wakes the consumers
return state
