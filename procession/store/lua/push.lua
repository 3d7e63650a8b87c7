-- push.lua: add jobs to one queue.
--
-- KEYS[1]  the queue's key prefix
-- KEYS[2]  the id index, <ns>:ids: every job's id and its queue
-- ARGV[1]  now (ms)           ARGV[2]  the wake channel
-- ARGV[3]  the queue's name
-- ARGV[4]  the wake message: '<queue> <server id>' (the pushing server
--          wakes its own consumers, and ignores its own messages)
-- then 15 values per job: id, type, args, priority, max_attempts, timeout,
--   meta, run_at (ms), wire (the start of its JOB frame, made for now:
--   procession.job.NewJob.wire), limit_key ('' for none; docs/limits.rst),
--   its workflow value ('' or JSON: its batch and the jobs it runs after,
--   see workflow.lua), unique lock name ('' for none), unique_for (ms),
--   unique_until ('start' or 'success'), expires_at (ms, 0 for never)
--
-- Returns, per job, 1 when it was created and 0 when a job with that id
-- already existed (which is left exactly as it was: pushes are idempotent),
-- or {name} of the other queue that holds a job with that id: ids are
-- unique across queues (<ns>:ids, see common.lua), or {'unique', id} of
-- the job holding the job's unique lock (nothing is stored; taking the
-- lock is part of this script, so two pushes of one key never both
-- create a job: unique locks, common.lua).
-- A job due now is queued; one due later is scheduled.  Every new job goes
-- into the created index.  A new job's hash is written once, with its
-- state: nothing has to be read back or removed.  The wake-up is published
-- only when another server's consumers may wait on the queue (the waiting
-- set, see common.lua): the pushing server wakes its own.
-- A job in a batch counts as pending in it; one that runs after unfinished
-- jobs waits (state 'waiting').  A push that names a batch that is not
-- open, or a parent that does not exist, is refused whole (an error reply
-- 'PROCESSION <code> <id>').
-- The server pushes jobs with no batch and no parents with this script's
-- plain variant, push_plain (procession.store.jobs.load_scripts): linked
-- without the workflow hooks (flow.*), which such a push never calls, so
-- Redis does not build them on every call.  Handed a workflow value, the
-- plain variant fails in its first loop, before it writes anything.
local STRIDE = 15
local now = tonumber(ARGV[1])
for i = 5, #ARGV, STRIDE do
  if ARGV[i + 10] ~= '' then
    local refused = flow.check(ARGV[i], ARGV[i + 10])
    if refused then
      return refused
    end
  end
end
local queue = ARGV[3]
local created = {}
local queued = 0
local n = 0
for i = 5, #ARGV, STRIDE do
  local id = ARGV[i]
  local key = jobkey(id)
  -- The id's entry in the id index, taken at once for a new id (one
  -- command where a read and a write were): given back below when the
  -- push stores nothing after all.
  local fresh = redis.call('HSETNX', KEYS[2], id, queue) == 1
  local owner = not fresh and redis.call('HGET', KEYS[2], id)
  if owner and owner ~= queue then
    created[#created + 1] = {owner}
  elseif redis.call('EXISTS', key) == 1 then
    -- (a job older than the id index, when fresh: now indexed)
    created[#created + 1] = 0
  -- unique jobs {
  elseif ARGV[i + 11] ~= ''
      and take_unique(id, ARGV[i + 11], ARGV[i + 12], ARGV[i + 13]) then
    if fresh then
      redis.call('HDEL', KEYS[2], id)
    end
    created[#created + 1] = {'unique', unique_holder(ARGV[i + 11])}
    redis.call('HINCRBY', prefix .. 'stats', 'collided', 1)
  -- }
  else
    local run_at = tonumber(ARGV[i + 7])
    local limit_key = ARGV[i + 9]
    local flow_text = ARGV[i + 10]
    if flow_text ~= '' then
      -- in a batch, or after other jobs (workflow.lua)
      redis.call('HSET', key,
        'id', id, 'type', ARGV[i + 1], 'queue', queue, 'args', ARGV[i + 2],
        'priority', ARGV[i + 3], 'max_attempts', ARGV[i + 4],
        'timeout', ARGV[i + 5], 'meta', ARGV[i + 6], 'attempt', 0,
        'created_at', now, 'wire', ARGV[i + 8])
      if limit_key ~= '' then
        redis.call('HSET', key, 'limit_key', limit_key)
      end
      if flow.pushed(id, queue, flow_text, now, run_at) then
        -- waiting for its parents (or cancelled: a parent is dead)
      elseif run_at > now then
        redis.call('HSET', key, 'state', 'scheduled', 'run_at', run_at)
        redis.call('ZADD', prefix .. 'scheduled', run_at, id)
      else
        enqueue(id, now, false)
        queued = queued + 1
      end
    elseif run_at > now then
      redis.call('HSET', key,
        'id', id, 'type', ARGV[i + 1], 'queue', queue, 'args', ARGV[i + 2],
        'priority', ARGV[i + 3], 'max_attempts', ARGV[i + 4],
        'timeout', ARGV[i + 5], 'meta', ARGV[i + 6], 'attempt', 0,
        'created_at', now, 'wire', ARGV[i + 8],
        'state', 'scheduled', 'run_at', run_at)
      redis.call('ZADD', prefix .. 'scheduled', run_at, id)
    else
      -- as enqueue() does, without reading back what is known here
      local member = string.format('%016d', redis.call('INCR', prefix .. 'seq')) .. id
      redis.call('HSET', key,
        'id', id, 'type', ARGV[i + 1], 'queue', queue, 'args', ARGV[i + 2],
        'priority', ARGV[i + 3], 'max_attempts', ARGV[i + 4],
        'timeout', ARGV[i + 5], 'meta', ARGV[i + 6], 'attempt', 0,
        'created_at', now, 'wire', ARGV[i + 8],
        'state', 'queued', 'enqueued_at', now, 'qm', member)
      redis.call('ZADD', prefix .. 'queued', -tonumber(ARGV[i + 3]), member)
      key_enqueue(key, member, -tonumber(ARGV[i + 3]), limit_key)  -- limits
      queued = queued + 1
    end
    if limit_key ~= '' then
      redis.call('HSET', key, 'limit_key', limit_key)
    end
    redis.call('ZADD', prefix .. 'created', 0, created_member(id, now))
    -- expiring jobs {
    if tonumber(ARGV[i + 14]) > 0 then
      redis.call('HSET', key, 'expires_at', ARGV[i + 14])
    end
    -- }
    n = n + 1
    created[#created + 1] = 1
  end
end
if n > 0 then
  count('pushed', now, n)
end
if queued > 0 then
  wake_waiting(ARGV[2], ARGV[4], string.sub(ARGV[4], #queue + 2))
end
return created
