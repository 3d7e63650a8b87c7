-- fail.lua: record failed attempts; retry later or give up.
--
-- KEYS[1]  the queue's key prefix
-- KEYS[2]  the id index, <ns>:ids (a discarded job leaves it)
-- ARGV[1]  now (ms)
-- then 5 values per job: id, lease token, error (JSON text),
--   retry_in (seconds; -1 for the default backoff, -2 for no retry,
--   -3 for no retry and no dead job: a Faktory job with retry 0),
--   jitter (0..30, drawn by the caller)
--
-- The default backoff is attempt^4 + 15 + jitter * (attempt + 1) seconds.
-- A job out of attempts, or failed with retry off, is dead; with -3 it is
-- deleted instead (its failure still counts in the queue's totals).
-- Returns per job {status, run_at}: status is 'retrying' (run_at is when),
-- 'dead' or 'discarded' (run_at 0), else 'not_found' or 'lease_lost'.
local now = tonumber(ARGV[1])
local replies = {}
local failed = 0
for i = 2, #ARGV, 5 do
  local id = ARGV[i]
  local problem, server = check_lease(id, ARGV[i + 1])
  if problem then
    replies[#replies + 1] = {problem, 0}
  else
    local key = jobkey(id)
    local retry_in = tonumber(ARGV[i + 3])
    local counts = redis.call('HMGET', key, 'attempt', 'max_attempts')
    local attempt = tonumber(counts[1])
    local max_attempts = tonumber(counts[2])
    record_error(id, ARGV[i + 2])
    leave_running(id, server)
    failed = failed + 1
    if retry_in == -3 then
      erase(id, KEYS[2])
      replies[#replies + 1] = {'discarded', 0}
    elseif retry_in == -2 or attempt >= max_attempts then
      make_dead(id, now)
      replies[#replies + 1] = {'dead', 0}
    else
      if retry_in == -1 then
        retry_in = attempt ^ 4 + 15 + tonumber(ARGV[i + 4]) * (attempt + 1)
      end
      local run_at = now + math.floor(retry_in * 1000)
      redis.call('HSET', key, 'state', 'retrying', 'run_at', run_at)
      -- Progress belongs to the attempt that failed.
      redis.call('HDEL', key, 'progress', 'progress_message', 'progress_at')
      redis.call('ZADD', prefix .. 'retrying', run_at, id)
      replies[#replies + 1] = {'retrying', run_at}
    end
  end
end
if failed > 0 then
  count('failed', now, failed)
end
wake_freed()  -- limits: a freed slot wakes the consumers
return replies
