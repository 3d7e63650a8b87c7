-- kill_bulk.lua: send up to N unfinished jobs of a queue to dead.
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  now (ms)
-- ARGV[2]  the state: queued, scheduled or retrying
-- ARGV[3]  the most jobs to kill in this call
--
-- Does for each job what kill.lua does for one, best first for queued
-- jobs, soonest due first otherwise.  Running jobs are not included: kill
-- them one at a time (kill.lua revokes the worker's lease).  Callers repeat
-- in batches so that no single call blocks Redis for long.  Returns how
-- many jobs it killed.
local now = tonumber(ARGV[1])
local state = ARGV[2]
if state ~= 'queued' and state ~= 'scheduled' and state ~= 'retrying' then
  return redis.error_reply('kill_bulk: bad state ' .. state)
end
local members = redis.call('ZRANGE', prefix .. state, 0, tonumber(ARGV[3]) - 1)
for _, member in ipairs(members) do
  local id = member
  if state == 'queued' then
    id = string.sub(member, 17)
  end
  redis.call('ZREM', prefix .. state, member)
  make_dead(id, now)
end
return #members
