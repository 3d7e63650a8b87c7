-- workflow.lua: batches, dependencies and waiters, shared by the scripts
-- (procession.store puts it after common.lua, in front of every script).
--
-- These keys are outside any one queue (they name the namespace, taken
-- from the queue prefix KEYS[1]), and a job's children may live in other
-- queues: the scripts that finish jobs reach them here.  (So batches and
-- dependencies need one Redis, not a cluster; see docs/workflows.rst.)
--
--   <ns>:batch:<bid>        hash: a batch: id, description, state (open,
--                           committed, done), total, pending, completed,
--                           dead, created_at, committed_at, finished_at,
--                           retention (ms), on_success / on_complete (the
--                           callbacks' push values, JSON), success_at /
--                           complete_at (when each was pushed)
--   <ns>:batch:<bid>:jobs   hash: the batch's job ids -> their queues
--   <ns>:batches            zset: every batch, score created_at ms
--
-- Fields of a job's hash used here: batch (its batch's id), bcount (the
-- batch counter it is in now: pending, completed or dead, so a count
-- never moves twice), after (JSON list of the ids it runs after),
-- after_left (how many of them have not finished), opd (on_parent_dead:
-- cancel or run), children (1 when jobs wait for it), awaited (1 when a
-- caller waits for it to finish: it then publishes '!done <id>').
--
-- Every server hears '!done <id>' (wake waiters) and '!cancel <id>' (tell
-- the TCP worker holding the job) on the wake channel; queue names cannot
-- start with '!'.

local NS = string.match(prefix, '^(.*):{')
-- The most jobs that may wait for one job: its finish releases them all in
-- one script call, which must stay short.
local MAX_CHILDREN = 10000
-- Children a push's checks have counted so far, per parent's set (this
-- script call's).
local adding = {}
local FLOW_CHANNEL = NS .. ':wake'

local function batchkey(bid)
  return NS .. ':batch:' .. bid
end

-- Run fn with the common helpers (jobkey, enqueue, ...) on another
-- queue's keys.
local function with_queue(queue, fn)
  local saved = prefix
  prefix = NS .. ':{' .. queue .. '}:'
  fn()
  prefix = saved
end

local function flow_now(now)
  if now and now > 0 then
    return now
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Create a job from a callback as batch.lua keeps it ({v = a NewJob's
-- push values, see push.lua, q = its queue, c = its created_at}) in its
-- queue, unless its id exists: a replay changes nothing.
local function create_callback(callback, now)
  local values = callback.v
  local queue = callback.q
  redis.call('SADD', NS .. ':queues', queue)
  with_queue(queue, function()
    local id = values[1]
    local key = jobkey(id)
    local ids = NS .. ':ids'
    if redis.call('HEXISTS', ids, id) == 1 or redis.call('EXISTS', key) == 1 then
      return
    end
    redis.call('HSET', ids, id, queue)
    local created_at = tonumber(callback.c)
    redis.call('HSET', key,
      'id', id, 'type', values[2], 'queue', queue, 'args', values[3],
      'priority', values[4], 'max_attempts', values[5],
      'timeout', values[6], 'meta', values[7], 'attempt', 0,
      'created_at', created_at, 'wire', values[9])
    if values[10] and values[10] ~= '' then
      redis.call('HSET', key, 'limit_key', values[10])
    end
    redis.call('ZADD', prefix .. 'created', 0, created_member(id, created_at))
    enqueue(id, now, false)
    count('pushed', now, 1)
    wake(FLOW_CHANNEL, queue)
  end)
end

-- Push the batch's callbacks that are due, each exactly once: called
-- whenever its counts or its state change.
local function batch_check(bid, now)
  local bkey = batchkey(bid)
  local b = redis.call('HMGET', bkey, 'state', 'pending', 'dead',
    'success_at', 'complete_at', 'on_success', 'on_complete', 'retention')
  if not b[1] or b[1] == 'open' or tonumber(b[2]) > 0 then
    return
  end
  if not b[5] then
    redis.call('HSET', bkey, 'state', 'done', 'complete_at', now,
      'finished_at', now)
    if b[7] and b[7] ~= '' then
      create_callback(cjson.decode(b[7]), now)
    end
  end
  if tonumber(b[3]) == 0 and not b[4] then
    redis.call('HSET', bkey, 'success_at', now)
    if b[6] and b[6] ~= '' then
      create_callback(cjson.decode(b[6]), now)
    end
  end
  local retention = tonumber(b[8] or 0)
  if retention > 0 then
    redis.call('PEXPIRE', bkey, retention)
    redis.call('PEXPIRE', bkey .. ':jobs', retention)
  end
end

-- Move a job of a batch to another of the batch's counters.
local function batch_move(bid, id, to, now)
  local key = jobkey(id)
  local from = redis.call('HGET', key, 'bcount')
  if from == to then
    return
  end
  local bkey = batchkey(bid)
  if redis.call('EXISTS', bkey) == 0 then
    return
  end
  redis.call('HSET', key, 'bcount', to)
  if from then
    redis.call('HINCRBY', bkey, from, -1)
  end
  redis.call('HINCRBY', bkey, to, 1)
  if to == 'pending' then
    -- A dead job retried: the batch must outlive its run.
    redis.call('PERSIST', bkey)
    redis.call('PERSIST', bkey .. ':jobs')
  else
    batch_check(bid, now)
  end
end

-- A job that waited for its parents may run: scheduled when its run_at
-- is still ahead, else queued (and its queue woken).
local function start_waiting(id, now)
  local key = jobkey(id)
  redis.call('ZREM', prefix .. 'dependent', id)
  redis.call('HDEL', key, 'after_left')
  local run_at = tonumber(redis.call('HGET', key, 'run_at') or 0)
  if run_at > now then
    redis.call('HSET', key, 'state', 'scheduled')
    redis.call('ZADD', prefix .. 'scheduled', run_at, id)
  else
    enqueue(id, now, false)
    wake(FLOW_CHANNEL, redis.call('HGET', key, 'queue'))
  end
end

-- Cancel a job that has not finished (cancel.lua, and the children of a
-- dead parent).  Returns its former state, or 'not_found' or
-- 'illegal_state'.
local function cancel_job(id, now)
  local key = jobkey(id)
  local state = redis.call('HGET', key, 'state')
  if not state then
    return 'not_found'
  end
  if state ~= 'queued' and state ~= 'scheduled' and state ~= 'retrying'
      and state ~= 'running' and state ~= 'waiting' then
    return 'illegal_state'
  end
  unlist(id, state)
  free_unique(id)  -- unique jobs
  redis.call('HSET', key, 'state', 'cancelled', 'finished_at', now)
  redis.call('HDEL', key, 'lease', 'run_at', 'after_left')
  redis.call('ZADD', prefix .. 'done', now, id)
  flow.finished(id, 'cancelled', now)
  return state
end

-- Tell the children of a finished job: one fewer parent to wait for, or,
-- when it did not complete, their on_parent_dead policy.
local function release_children(id, state, now)
  local ckey = prefix .. 'children:' .. id
  local members = redis.call('SMEMBERS', ckey)
  redis.call('DEL', ckey)
  for _, member in ipairs(members) do
    local queue, child = string.match(member, '^(%S+) (%S+)$')
    with_queue(queue, function()
      local f = redis.call('HMGET', jobkey(child), 'state', 'after_left', 'opd')
      if f[1] ~= 'waiting' then
        return
      end
      if state == 'completed' or f[3] == 'run' then
        local left = tonumber(f[2] or 1) - 1
        if left > 0 then
          redis.call('HSET', jobkey(child), 'after_left', left)
        else
          start_waiting(child, now)
        end
      else
        cancel_job(child, now)
      end
    end)
  end
end

flow.finished = function(id, state, now)
  now = flow_now(now)
  local f = redis.call('HMGET', jobkey(id), 'batch', 'children', 'awaited')
  if f[1] then
    local to = 'dead'
    if state == 'completed' then
      to = 'completed'
    end
    batch_move(f[1], id, to, now)
  end
  if f[2] then
    release_children(id, state, now)
  end
  if f[3] then
    redis.call('PUBLISH', FLOW_CHANNEL, '!done ' .. id)
  end
end

flow.revoked = function(id)
  redis.call('PUBLISH', FLOW_CHANNEL, '!cancel ' .. id)
end

-- A dead job is queued again (retry.lua, retry_bulk.lua): it is pending in
-- its batch again.
flow.revived = function(id, now)
  local bid = redis.call('HGET', jobkey(id), 'batch')
  if bid then
    batch_move(bid, id, 'pending', now)
  end
end

-- The checks a push makes before it creates anything: a job that names a
-- batch needs it open, one that runs after others needs them to exist.
-- flow_text is the job's workflow value (JSON: {"b": batch id, "a":
-- [[queue, id], ...], "p": on_parent_dead}) or ''.  Returns an error
-- reply or nil.
flow.check = function(id, flow_text)
  if flow_text == '' or redis.call('EXISTS', jobkey(id)) == 1 then
    return nil
  end
  local spec = cjson.decode(flow_text)
  if spec.b then
    local state = redis.call('HGET', batchkey(spec.b), 'state')
    if not state then
      return redis.error_reply('PROCESSION batch_not_found ' .. spec.b)
    end
    if state ~= 'open' then
      return redis.error_reply('PROCESSION batch_not_open ' .. spec.b)
    end
  end
  for _, parent in ipairs(spec.a or {}) do
    local pprefix = NS .. ':{' .. parent[1] .. '}:'
    if redis.call('EXISTS', pprefix .. 'job:' .. parent[2]) == 0 then
      return redis.error_reply('PROCESSION parent_not_found ' .. parent[2])
    end
    local ckey = pprefix .. 'children:' .. parent[2]
    adding[ckey] = (adding[ckey] or 0) + 1
    if redis.call('SCARD', ckey) + adding[ckey] > MAX_CHILDREN then
      return redis.error_reply('PROCESSION too_many_children ' .. parent[2])
    end
  end
  return nil
end

-- A job just created by a push joins its batch and its parents.  Returns
-- true when it must not be queued now: it waits for its parents (state
-- 'waiting'), or was cancelled at once because one is dead.
flow.pushed = function(id, queue, flow_text, now, run_at)
  if flow_text == '' then
    return false
  end
  local spec = cjson.decode(flow_text)
  local key = jobkey(id)
  if spec.b then
    local bkey = batchkey(spec.b)
    redis.call('HINCRBY', bkey, 'total', 1)
    redis.call('HINCRBY', bkey, 'pending', 1)
    redis.call('HSET', bkey .. ':jobs', id, queue)
    redis.call('HSET', key, 'batch', spec.b, 'bcount', 'pending')
  end
  local parents = spec.a or {}
  if #parents == 0 then
    return false
  end
  local policy = spec.p or 'cancel'
  local ids = {}
  local left = 0
  local doomed = false
  for _, parent in ipairs(parents) do
    ids[#ids + 1] = parent[2]
    local pprefix = NS .. ':{' .. parent[1] .. '}:'
    local state = redis.call('HGET', pprefix .. 'job:' .. parent[2], 'state')
    if state == 'dead' or state == 'cancelled' then
      if policy ~= 'run' then
        doomed = true
      end
    elseif state ~= 'completed' then
      redis.call('SADD', pprefix .. 'children:' .. parent[2], queue .. ' ' .. id)
      redis.call('HSET', pprefix .. 'job:' .. parent[2], 'children', 1)
      left = left + 1
    end
  end
  redis.call('HSET', key, 'after', cjson.encode(ids), 'opd', policy)
  if doomed then
    redis.call('HSET', key, 'state', 'waiting')
    cancel_job(id, now)
    return true
  end
  if left == 0 then
    return false
  end
  redis.call('HSET', key, 'state', 'waiting', 'after_left', left)
  if run_at > now then
    redis.call('HSET', key, 'run_at', run_at)
  end
  redis.call('ZADD', prefix .. 'dependent', now, id)
  return true
end
