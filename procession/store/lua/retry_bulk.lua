-- retry_bulk.lua: run up to N waiting or dead jobs of a queue now.
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  now (ms)           ARGV[2]  the wake channel
-- ARGV[3]  the queue's name
-- ARGV[4]  the state: scheduled, retrying or dead
-- ARGV[5]  the most jobs to move in this call
--
-- Does for each job what retry.lua does for one, taking the state's jobs
-- in their set's order (soonest due, or longest dead, first), so they
-- reach the back of the queue in that order.  Callers repeat in batches
-- so that no single call blocks Redis for long.  Returns how many jobs it
-- moved.
local now = tonumber(ARGV[1])
local state = ARGV[4]
if state ~= 'scheduled' and state ~= 'retrying' and state ~= 'dead' then
  return redis.error_reply('retry_bulk: bad state ' .. state)
end
local ids = redis.call('ZRANGE', prefix .. state, 0, tonumber(ARGV[5]) - 1)
for _, id in ipairs(ids) do
  redis.call('ZREM', prefix .. state, id)
  redis.call('HDEL', jobkey(id), 'finished_at')
  enqueue(id, now, false)
  if state == 'dead' then
    flow.revived(id, now)
  end
end
if #ids > 0 then
  wake(ARGV[2], ARGV[3])
end
return #ids
