-- await.lua: a caller starts waiting for a job to finish.
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  the job's id
--
-- Returns the job's state, or 'not_found'.  Unless it has finished
-- (completed, dead, cancelled, expired), the job is marked awaited, so that the
-- script that finishes it publishes '!done <id>' on the wake channel and
-- every server's waiters hear of it (workflow.lua).  The caller listens
-- before it runs this: the finish cannot fall between the two.
local key = jobkey(ARGV[1])
local state = redis.call('HGET', key, 'state')
if not state then
  return 'not_found'
end
if state ~= 'completed' and state ~= 'dead' and state ~= 'cancelled'
    and state ~= 'expired' then
  redis.call('HSET', key, 'awaited', 1)
end
return state
