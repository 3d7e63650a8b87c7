-- retry.lua: run a waiting or dead job now.
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  now (ms)           ARGV[2]  the wake channel
-- ARGV[3]  the queue's name   ARGV[4]  the job's id
--
-- A scheduled, retrying or dead job goes to the back of its queue.  A dead
-- job keeps its attempt count, so it gets one more attempt.  Returns the
-- job's former state, or 'not_found' or 'illegal_state'.
local now = tonumber(ARGV[1])
local id = ARGV[4]
local key = jobkey(id)
local state = redis.call('HGET', key, 'state')
if not state then
  return 'not_found'
end
if state ~= 'scheduled' and state ~= 'retrying' and state ~= 'dead' then
  return 'illegal_state'
end
unlist(id, state)
redis.call('HDEL', key, 'finished_at')
enqueue(id, now, false)
if state == 'dead' then
  flow.revived(id, now)
end
wake(ARGV[2], ARGV[3])
return state
