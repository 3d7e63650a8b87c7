-- push.lua: add jobs to one queue.
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  now (ms)           ARGV[2]  the wake channel
-- ARGV[3]  the queue's name
-- ARGV[4]  the wake message: '<queue> <server id>' (the pushing server
--          wakes its own consumers, and ignores its own messages)
-- then 9 values per job: id, type, args, priority, max_attempts, timeout,
--   meta, run_at (ms), wire (the start of its JOB frame, made for now:
--   procession.job.NewJob.wire)
--
-- Returns, per job, 1 when it was created and 0 when a job with that id
-- already existed (which is left exactly as it was: pushes are idempotent).
-- A job due now is queued; one due later is scheduled.  Every new job goes
-- into the created index.
local now = tonumber(ARGV[1])
local queue = ARGV[3]
local created = {}
local queued = 0
local n = 0
for i = 5, #ARGV, 9 do
  local id = ARGV[i]
  local key = jobkey(id)
  if redis.call('EXISTS', key) == 1 then
    created[#created + 1] = 0
  else
    local run_at = tonumber(ARGV[i + 7])
    redis.call('HSET', key,
      'id', id, 'type', ARGV[i + 1], 'queue', queue, 'args', ARGV[i + 2],
      'priority', ARGV[i + 3], 'max_attempts', ARGV[i + 4],
      'timeout', ARGV[i + 5], 'meta', ARGV[i + 6], 'attempt', 0,
      'created_at', now, 'wire', ARGV[i + 8])
    redis.call('ZADD', prefix .. 'created', 0, created_member(id, now))
    if run_at > now then
      redis.call('HSET', key, 'state', 'scheduled', 'run_at', run_at)
      redis.call('ZADD', prefix .. 'scheduled', run_at, id)
    else
      enqueue(id, now, false)
      queued = queued + 1
    end
    n = n + 1
    created[#created + 1] = 1
  end
end
if n > 0 then
  count('pushed', now, n)
end
if queued > 0 then
  wake(ARGV[2], ARGV[4])
end
return created
