-- cancel.lua: cancel a job that has not finished.
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  now (ms)           ARGV[2]  the job's id
--
-- A queued, scheduled, retrying or running job becomes cancelled; a running
-- job's lease is revoked, so its worker's later ack or fail is refused with
-- lease_lost.  Returns the job's former state, or 'not_found' or
-- 'illegal_state'.
local now = tonumber(ARGV[1])
local id = ARGV[2]
local key = jobkey(id)
local state = redis.call('HGET', key, 'state')
if not state then
  return 'not_found'
end
if state ~= 'queued' and state ~= 'scheduled' and state ~= 'retrying'
    and state ~= 'running' then
  return 'illegal_state'
end
unlist(id, state)
redis.call('HSET', key, 'state', 'cancelled', 'finished_at', now)
redis.call('HDEL', key, 'lease', 'run_at')
redis.call('ZADD', prefix .. 'done', now, id)
return state
