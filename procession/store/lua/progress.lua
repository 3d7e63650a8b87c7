-- progress.lua: the worker holding a job says how far it has got.
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  now (ms)
-- then 4 values per job: id, lease token, percent (0-100), message ('' for
--   none)
--
-- Returns per job 'ok', or 'not_found', 'lease_lost' or 'cancelled' (a
-- cancelled job's worker should stop).  Only the lease holder may report.
local now = tonumber(ARGV[1])
local replies = {}
for i = 2, #ARGV, 4 do
  local id = ARGV[i]
  local problem = check_lease(id, ARGV[i + 1])
  if problem then
    replies[#replies + 1] = problem
  else
    redis.call('HSET', jobkey(id), 'progress', ARGV[i + 2],
      'progress_message', ARGV[i + 3], 'progress_at', now)
    replies[#replies + 1] = 'ok'
  end
end
return replies
