-- ack.lua: complete jobs whose leases the caller holds.
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  now (ms)
-- then 3 values per job: id, lease token, result (JSON text, '' for none)
--
-- Returns per job 'ok', 'not_found', 'lease_lost' or 'cancelled'.  A
-- refused ack changes nothing.  A completed job counts in its batch,
-- releases the jobs that wait for it (workflow.lua) and frees its unique
-- lock.
local now = tonumber(ARGV[1])
local replies = {}
local done = 0
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  local problem, server = check_lease(id, ARGV[i + 1])
  if problem then
    replies[#replies + 1] = problem
  else
    redis.call('HSET', jobkey(id), 'state', 'completed', 'finished_at', now,
      'result', ARGV[i + 2])
    leave_running(id, server)
    free_unique(id, 'success')
    redis.call('ZADD', prefix .. 'done', now, id)
    flow.finished(id, 'completed', now)
    done = done + 1
    replies[#replies + 1] = 'ok'
  end
end
if done > 0 then
  count('processed', now, done)
end
wake_freed()  -- limits: a freed slot wakes the consumers
return replies
