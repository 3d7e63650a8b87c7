-- release.lua: give leased jobs back to their queue at once.
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  now (ms)           ARGV[2]  the wake channel
-- ARGV[3]  the queue's name   ARGV[4]  the error to record (JSON text)
-- ARGV[5]  '1' when the jobs never reached a worker: their attempt is
--          not counted and no error is recorded
-- then 2 values per job: id, lease token
--
-- Used when a worker's connection drops, when it says BYE, when the server
-- shuts down, and for jobs claimed for a worker that vanished before they
-- could be sent.  Jobs whose lease the caller no longer holds are left
-- alone.  Returns per job 'queued', 'dead', 'not_found' or 'lease_lost'.
local now = tonumber(ARGV[1])
local uncount = ARGV[5] == '1'
local replies = {}
local queued = 0
for i = 6, #ARGV, 2 do
  local id = ARGV[i]
  local problem = check_lease(id, ARGV[i + 1])
  if problem then
    replies[#replies + 1] = problem
  else
    local outcome = release_job(id, now, ARGV[4], uncount)
    if outcome == 'queued' then
      queued = queued + 1
    end
    replies[#replies + 1] = outcome
  end
end
if queued > 0 then
  wake(ARGV[2], ARGV[3])
end
wake_freed()  -- limits: a freed slot wakes the consumers
return replies
