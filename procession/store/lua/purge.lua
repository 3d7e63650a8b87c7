-- purge.lua: delete up to N jobs of one state from a queue.
--
-- KEYS[1]  the queue's key prefix
-- KEYS[2]  the id index, <ns>:ids (see common.lua)
-- ARGV[1]  the state: queued, scheduled, retrying or dead
-- ARGV[2]  the most jobs to delete in this call
--
-- Each job goes with its error history and its entry in the created index.
-- Callers repeat until it returns 0, so no single call blocks Redis for
-- long.  Returns how many jobs it deleted.
local state = ARGV[1]
local limit = tonumber(ARGV[2])
local members = redis.call('ZRANGE', prefix .. state, 0, limit - 1)
for _, member in ipairs(members) do
  local id = member
  if state == 'queued' then
    id = string.sub(member, 17)
  end
  redis.call('ZREM', prefix .. state, member)
  erase(id, KEYS[2])
end
return #members
