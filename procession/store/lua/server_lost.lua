-- server_lost.lua: release the jobs a lost server held in one queue.
--
-- KEYS[1]  the queue's key prefix
-- KEYS[2]  <prefix>held:<server>, the lost server's held set
-- ARGV[1]  now (ms)           ARGV[2]  the wake channel
-- ARGV[3]  the queue's name   ARGV[4]  the error to record (JSON text)
-- ARGV[5]  the most jobs to look at in this call
-- ARGV[6]  the lost server's id
--
-- For a server that stopped heartbeating (it died, or lost Redis for
-- longer than the server timeout): the jobs its worker connections held
-- go back to the queue as release.lua gives them back, the attempt
-- counted (a job out of attempts is dead).  A job in the held set that
-- has since left 'running' or gone to another server is only dropped from
-- the set.  Safe when many servers do it at once: the second finds
-- nothing left.  Callers repeat while jobs are left.  The server leaves
-- the queue's waiting set (common.lua): its consumers are gone.
-- Returns {released, left in the held set}.
local now = tonumber(ARGV[1])
local held = KEYS[2]
local server = ARGV[6]
redis.call('SREM', prefix .. 'waiting', server)
local ids = redis.call('SRANDMEMBER', held, tonumber(ARGV[5]))
local taken = 0
local queued = 0
for _, id in ipairs(ids) do
  local fields = redis.call('HMGET', jobkey(id), 'state', 'server')
  if fields[1] == 'running' and fields[2] == server then
    if release_job(id, now, ARGV[4], false) == 'queued' then
      queued = queued + 1
    end
    taken = taken + 1
  else
    redis.call('SREM', held, id)
  end
end
if queued > 0 then
  wake(ARGV[2], ARGV[3])
end
wake_freed()  -- limits: a freed slot wakes the consumers
return {taken, redis.call('SCARD', held)}
