-- delete.lua: remove a job, whatever its state, with its error history
-- and its entry in the created index.
--
-- KEYS[1]  the queue's key prefix
-- KEYS[2]  the id index, <ns>:ids (see common.lua)
-- ARGV[1]  the job's id
--
-- A running job's worker will find its lease lost.  Returns the former
-- state or 'not_found'.
local id = ARGV[1]
local state = redis.call('HGET', jobkey(id), 'state')
if not state then
  return 'not_found'
end
unlist(id, state)
erase(id, KEYS[2])
wake_freed()  -- limits: a freed slot wakes the consumers
return state
