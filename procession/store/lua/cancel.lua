-- cancel.lua: cancel a job that has not finished.
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  now (ms)           ARGV[2]  the job's id
--
-- A waiting, queued, scheduled, retrying or running job becomes cancelled;
-- a running job's lease is revoked, so its worker's later ack or fail is
-- refused with 'cancelled', and its TCP worker is sent CANCEL (the
-- '!cancel' message, workflow.lua).  A cancelled job counts as dead in its
-- batch, and cancels (or, with on_parent_dead 'run', releases) the jobs
-- waiting for it.  Returns the job's former state, or 'not_found' or
-- 'illegal_state'.  A cancelled job frees its unique lock (cancel_job).
local state = cancel_job(ARGV[2], tonumber(ARGV[1]))
wake_freed()  -- limits: a freed slot wakes the consumers
return state
