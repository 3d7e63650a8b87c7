-- common.lua: helpers that procession.store puts in front of every script.
--
-- Each script gets only the definitions it names, and those they name
-- (procession/store/preamble.py): every top-level statement here starts
-- in column 0 as 'local function NAME(', 'local NAME = ...' on one line,
-- or 'flow.NAME = function(' (workflow.lua), and a function's 'end' is in
-- column 0.
--
-- Every script takes KEYS[1] = the queue's key prefix, "<ns>:{<queue>}:",
-- and builds the queue's other keys from it, so that every key a script
-- touches carries the queue's hash tag and stays in one cluster slot.
-- (claim.lua and server_lost.lua also name one server's held set,
-- "<prefix>held:<server>", as KEYS[2]: same hash tag; the server's id
-- comes as an argument, never cut out of the key.)  Python builds every
-- key name in procession/store/keys.py, which lists these (QUEUE_KEYS);
-- keep the two in step.
--
-- Keys under the prefix:
--   job:<id>     hash: the job (fields listed in procession/core/job.py)
--   errors:<id>  list: the job's last failures, newest first, JSON each
--   queued       zset: score -priority, member <16-digit seq><id> (FIFO
--                among equal priorities)
--   scheduled    zset: score run_at ms, member id
--   retrying     zset: score run_at ms, member id
--   running      zset: score lease expiry ms, member id
--   dead         zset: score time of death ms, member id
--   done         zset: score finish time ms, member id (completed, cancelled,
--                expired)
--   dependent    zset: score created_at ms, member id: the jobs in state
--                'waiting', for the jobs they run after (workflow.lua)
--   children:<id> set: '<queue> <id>' of each job waiting for job <id>
--   created      zset: every job of the queue, newest last: score 0, member
--                <15-digit created_at ms><id>, so that ZREVRANGEBYLEX walks
--                jobs by (created_at, id) and a listing resumes exactly
--                where it stopped (the HTTP API's paged job listing)
--   seq          string: the FIFO counter
--   paused       string: present while the queue is paused
--   stats        hash: pushed, processed, failed (since the queue began)
--   minute:<m>   hash: processed, failed in minute m (expires after 2 days)
--   waiting      set: ids of the servers whose consumers may wait for a
--                wake-up on this queue: claim.lua adds the claiming server
--                when a claim comes back short (the queue ran dry, or is
--                paused) and removes it when one fills every slot (that
--                server claims again without being woken); server_lost.lua
--                removes a lost or departing server.  A push publishes
--                only when a server other than its own is in it, so one
--                server's entry never stops wake-ups to another.
--   unique:<l>   string: the id of the job holding unique lock l (a digest
--                of the unique key), expiring after the push's unique_for
--   periodic:<n> hash: periodic entry n's ticks in this queue: tick (the
--                last tick claimed, ms), job (the id of the last job it
--                pushed), run_at (when, ms), runs, skipped (tick.lua)
--   held:<srv>   set: ids of running jobs whose lease lives and dies with a
--                connection to server <srv> (TCP workers; not HTTP polls),
--                which the job's hash names in 'server'.  When that server
--                stops heartbeating, any server gives them back
--                (server_lost.lua) instead of waiting for the leases.
--   limits       hash: the queue's limits (docs/limits.rst), enforced by
--                claim.lua: concurrency, rate (jobs per window), per (the
--                window, ms), per_key ('1': they apply to each limit_key
--                apart), and the wake channel and queue name that the
--                scripts freeing a slot publish on; absent while the queue
--                has never had limits
--   window       zset: the queue's rate window: one member per start
--                within the last 'per' ms (<id>:<ms>), score its time
--   throttle     hash: since (ms; present while claims are held back by
--                the limits), total (ms held back before that)
--   kq:<key>     zset: with per_key, a limit key's queued jobs (as in
--                'queued', which holds them too)
--   krun:<key>   set: ids of the key's running jobs (the job's hash names
--                the key it counts under in 'lk')
--   kwin:<key>   zset: the key's rate window, as 'window'
--   lkeys        hash: limit key -> 'r' (in 'lready'), 'b' (held back by
--                its concurrency), 'w' (held back by its rate, in 'lwait');
--                only keys that have queued jobs, so that idle keys cost
--                a claim nothing
--   lready       list: the keys claims serve, round-robin
--   lwait        zset: keys held back by their rate, score when their
--                window opens again
--
-- One key lies outside every queue: <ns>:ids, a hash of every job's id to
-- its queue, so that an id is unique across queues.  push.lua, tick.lua,
-- fail.lua, delete.lua, purge.lua and sweep.lua take it as KEYS[2] (push
-- and tick check and record ids, erase() forgets them): the one key they
-- touch outside their queue's hash tag.  (workflow.lua's batch callbacks
-- reach it by name, as they reach the batches' keys.)

local prefix = KEYS[1]
local MAX_ERRORS = 10

-- Batches, dependencies and waiters (workflow.lua, loaded after this file,
-- fills it in): flow.finished(id, state, now) runs whenever a job reaches
-- completed, dead, cancelled or expired or is erased unfinished; flow.revoked(id)
-- whenever a running job's lease is taken from its worker by an operator.
local flow = {}

local function jobkey(id)
  return prefix .. 'job:' .. id
end

-- == Unique jobs ==========================================================
-- A job pushed with unique_for holds the lock prefix..'unique:'..<name>,
-- whose value is the job's id and which expires after unique_for whatever
-- happens, so that a lost job never blocks its key for good.  The job's
-- hash names the lock ('ulock') and when it frees ('uuntil': 'start' when
-- a worker takes the job, 'success' when it completes; either way a job
-- that ends dead, cancelled, expired or deleted frees it).  Freeing checks
-- the value, so a job never frees a lock that another job took after its
-- own expired.

-- Take the lock for job id; true when another job holds it (refused).
local function take_unique(id, name, ttl, until_)
  if redis.call('SET', prefix .. 'unique:' .. name, id, 'PX', ttl, 'NX') then
    redis.call('HSET', jobkey(id), 'ulock', name, 'uuntil', until_)
    return false
  end
  return true
end

local function unique_holder(name)
  return redis.call('GET', prefix .. 'unique:' .. name)
end

-- Free a job's unique lock if it holds one, and only when it frees at
-- 'when' ('start' or 'success'; nil: whatever its unique_until).
local function free_unique(id, when)
  local fields = redis.call('HMGET', jobkey(id), 'ulock', 'uuntil')
  if not fields[1] or (when and fields[2] ~= when) then
    return
  end
  local lock = prefix .. 'unique:' .. fields[1]
  if redis.call('GET', lock) == id then
    redis.call('DEL', lock)
  end
  redis.call('HDEL', jobkey(id), 'ulock')
end
-- == end of unique jobs ===================================================

-- == Limits (docs/limits.rst; keys in the header) ======================
-- By queue prefix (a script may work on several queues' keys, as
-- workflow.lua's with_queue does): the limits read, and whether a job
-- left 'running' while a concurrency limit may hold back queued jobs
-- (see wake_freed), in the order the queues freed slots.
local limits_read = {}
local slot_freed = {}
local freed_order = {}

-- The current queue's limits, read once per script call: false when it
-- has never had any, else a table (fields nil when not set).
local function queue_limits()
  local read = limits_read[prefix]
  if read == nil then
    local f = redis.call('HMGET', prefix .. 'limits', 'set', 'concurrency',
      'rate', 'per', 'per_key', 'channel', 'queue')
    if not f[1] then
      read = false
    else
      read = {concurrency = tonumber(f[2]), rate = tonumber(f[3]),
        per = tonumber(f[4]), per_key = f[5] == '1', channel = f[6],
        queue = f[7]}
    end
    limits_read[prefix] = read
  end
  return read
end

-- Index a queued job (member/score as in 'queued') under its limit key
-- (lk, or read from its hash when nil), on a per_key queue, and put the
-- key in the rotation if it was idle.
local function key_enqueue(key, member, score, lk)
  local limit = queue_limits()
  if not limit or not limit.per_key then
    return
  end
  lk = lk or redis.call('HGET', key, 'limit_key') or ''
  redis.call('ZADD', prefix .. 'kq:' .. lk, score, member)
  if redis.call('HSETNX', prefix .. 'lkeys', lk, 'r') == 1 then
    redis.call('RPUSH', prefix .. 'lready', lk)
  end
end

-- A job leaves 'running': free its slot, and its key's.
local function key_leave(key)
  local limit = queue_limits()
  if not limit then
    return
  end
  if limit.concurrency and not slot_freed[prefix] then
    slot_freed[prefix] = true
    freed_order[#freed_order + 1] = prefix
  end
  local lk = redis.call('HGET', key, 'lk')
  if lk then
    redis.call('SREM', prefix .. 'krun:' .. lk, string.sub(key, #prefix + 5))
    redis.call('HDEL', key, 'lk')
    if redis.call('HGET', prefix .. 'lkeys', lk) == 'b' then
      redis.call('HSET', prefix .. 'lkeys', lk, 'r')
      redis.call('RPUSH', prefix .. 'lready', lk)
    end
  end
end
-- == end of limits (more after wake) ======================================

-- Put a job (already in its hash) on the queued zset.  keep_place reuses
-- the job's old FIFO position, so a job given back by a worker does not go
-- behind jobs pushed after it.  The last attempt's progress is cleared.
local function enqueue(id, now, keep_place)
  local key = jobkey(id)
  local member = nil
  if keep_place then
    member = redis.call('HGET', key, 'qm')
  end
  if not member then
    local seq = redis.call('INCR', prefix .. 'seq')
    member = string.format('%016d', seq) .. id
  end
  local priority = tonumber(redis.call('HGET', key, 'priority'))
  redis.call('HSET', key, 'state', 'queued', 'enqueued_at', now, 'qm', member)
  -- Progress belongs to an attempt: a job back in its queue has none.
  redis.call('HDEL', key, 'run_at', 'lease', 'progress', 'progress_message',
    'progress_at')
  redis.call('ZADD', prefix .. 'queued', -priority, member)
  key_enqueue(key, member, -priority)
end

-- A job's member in the created index.
local function created_member(id, created_at)
  return string.format('%015d', tonumber(created_at)) .. id
end

-- Remove a job for good: its hash, its error history, its index entry and
-- its id in the id index (ids: <ns>:ids).  The caller takes it off its
-- state set.
local function erase(id, ids)
  free_unique(id)
  local state = redis.call('HGET', jobkey(id), 'state')
  if state and state ~= 'completed' and state ~= 'dead' and state ~= 'cancelled'
      and state ~= 'expired' then
    -- A job deleted before it finished never completes.
    flow.finished(id, 'cancelled', 0)
  end
  local created_at = redis.call('HGET', jobkey(id), 'created_at')
  if created_at then
    redis.call('ZREM', prefix .. 'created', created_member(id, created_at))
  end
  redis.call('DEL', jobkey(id), prefix .. 'errors:' .. id)
  redis.call('HDEL', ids, id)
end

local function record_error(id, err)
  local key = prefix .. 'errors:' .. id
  redis.call('LPUSH', key, err)
  redis.call('LTRIM', key, 0, MAX_ERRORS - 1)
end

-- Expiring jobs: end a job that was not started before its expires_at.
-- The caller has taken it off its state set.  Expired jobs are kept like
-- completed ones (in 'done', under the same retention).
local MAX_EXPIRED_PER_CLAIM = 1000
local function expire_job(id, now)
  free_unique(id)
  redis.call('HSET', jobkey(id), 'state', 'expired', 'finished_at', now)
  redis.call('HDEL', jobkey(id), 'lease', 'run_at')
  redis.call('ZADD', prefix .. 'done', now, id)
  flow.finished(id, 'expired', now)
end

local function make_dead(id, now)
  free_unique(id)
  redis.call('HSET', jobkey(id), 'state', 'dead', 'finished_at', now)
  redis.call('HDEL', jobkey(id), 'lease', 'run_at')
  redis.call('ZADD', prefix .. 'dead', now, id)
  flow.finished(id, 'dead', now)
end

local function count(field, now, n)
  redis.call('HINCRBY', prefix .. 'stats', field, n)
  if field ~= 'pushed' then
    local mkey = prefix .. 'minute:' .. math.floor(now / 60000)
    redis.call('HINCRBY', mkey, field, n)
    redis.call('EXPIRE', mkey, 172800)
  end
end

-- Take a job off the running set, and off its server's held set, and end
-- its lease.  Every way out of 'running' goes through here.  server: the
-- job's 'server' field if the caller has read it (false: it has none), or
-- nil to read it here.
local function leave_running(id, server)
  local key = jobkey(id)
  redis.call('ZREM', prefix .. 'running', id)
  if server == nil then
    server = redis.call('HGET', key, 'server')
  end
  if server then
    redis.call('SREM', prefix .. 'held:' .. server, id)
  end
  redis.call('HDEL', key, 'lease', 'server')
  key_leave(key)
end

-- Remove a job from whichever state set holds it.
local function unlist(id, state)
  local key = jobkey(id)
  if state == 'queued' then
    redis.call('ZREM', prefix .. 'queued', redis.call('HGET', key, 'qm'))
  elseif state == 'running' then
    leave_running(id)
    flow.revoked(id)
  elseif state == 'waiting' then
    redis.call('ZREM', prefix .. 'dependent', id)
  elseif state == 'scheduled' or state == 'retrying' or state == 'dead' then
    redis.call('ZREM', prefix .. state, id)
  elseif state == 'completed' or state == 'cancelled' or state == 'expired' then
    redis.call('ZREM', prefix .. 'done', id)
  end
end

-- Release a job its worker no longer runs back to its queue (connection
-- lost, lease expired, server lost, shut down).  The attempt was counted when the job was claimed: a job that has
-- used up its attempts is dead, so a job that kills its worker every time
-- cannot loop forever.  Returns 'queued' or 'dead'.
local function release_job(id, now, err, uncount)
  local key = jobkey(id)
  leave_running(id)
  redis.call('HDEL', key, 'worker')
  if uncount then
    redis.call('HINCRBY', key, 'attempt', -1)
    enqueue(id, now, true)
    return 'queued'
  end
  record_error(id, err)
  local attempt = tonumber(redis.call('HGET', key, 'attempt'))
  local max_attempts = tonumber(redis.call('HGET', key, 'max_attempts'))
  if attempt >= max_attempts then
    make_dead(id, now)
    return 'dead'
  end
  enqueue(id, now, true)
  return 'queued'
end

-- Tell every procession server that a queue has work: the message is the
-- queue's name, and may name the server that sent it after a space.
local woken = {}  -- by queue prefix: published already (limits)
local function wake(channel, queue)
  if redis.call('EXISTS', prefix .. 'paused') == 0 then
    redis.call('PUBLISH', channel, queue)
    woken[prefix] = true
  end
end

-- wake() for a push by server <self>: only when a server other than
-- <self> may have consumers waiting on the queue (the waiting set).
local function wake_waiting(channel, message, self)
  local waiting = redis.call('SCARD', prefix .. 'waiting')
  if waiting > 1 or (waiting == 1
      and redis.call('SISMEMBER', prefix .. 'waiting', self) == 0) then
    wake(channel, message)
  end
end

-- == Limits, continued ====================================================
-- Scripts that take jobs out of 'running' end with this: when that freed
-- a slot of a concurrency limit and jobs wait, wake the consumers at once
-- (on the channel set_limits.lua recorded with the limits).
local function wake_freed()
  local home = prefix
  for _, freed in ipairs(freed_order) do
    prefix = freed
    if not woken[freed] and redis.call('ZCARD', prefix .. 'queued') > 0 then
      local limit = queue_limits()
      wake(limit.channel, limit.queue)
    end
  end
  prefix = home
end

-- How many of 'wanted' jobs the queue's own limits let a claim start now
-- (per_key limits are applied by pop_by_key instead).
local function allowance(limit, now, wanted)
  local allowed = wanted
  if limit.concurrency then
    local free = limit.concurrency - redis.call('ZCARD', prefix .. 'running')
    allowed = math.max(0, math.min(allowed, free))
  end
  if limit.rate then
    local window = prefix .. 'window'
    redis.call('ZREMRANGEBYSCORE', window, '-inf', now - limit.per)
    local free = limit.rate - redis.call('ZCARD', window)
    allowed = math.max(0, math.min(allowed, free))
  end
  return allowed
end

-- When the rate window 'window' (pruned at 'now', and with 'extra' more
-- starts at 'now' than it records yet) opens a slot again: when so many
-- of its oldest starts have left it that fewer than the rate remain.  Ms
-- from now, at least 1.
local function window_opens(window, limit, now, extra)
  local recorded = redis.call('ZCARD', window)
  local index = recorded + extra - limit.rate
  if index < 0 then
    return 1
  end
  if index < recorded then
    local entry = redis.call('ZRANGE', window, index, index, 'WITHSCORES')
    return math.max(1, tonumber(entry[2]) + limit.per - now)
  end
  return limit.per
end

-- The time a claim at 'now' counts its starts at in rate window 'window':
-- never before the window's newest start.  Servers' clocks are read
-- before their claims reach Redis, so a claim may run after another that
-- read a later time; counting no time back keeps the starts in order and
-- the window exact (claim.lua does the same for the queue's window).
local function window_now(window, now)
  local newest = redis.call('ZRANGE', window, -1, -1, 'WITHSCORES')
  if newest[2] then
    return math.max(now, tonumber(newest[2]))
  end
  return now
end

-- Pop up to 'wanted' queued jobs of a per_key queue, one per key in turn
-- (round-robin over the 'lready' list), each key within its own limits.
-- Returns them as ZPOPMIN would ({member, score, ...}); the claim leases
-- them and counts them with limit_started.
local function pop_by_key(limit, now, wanted)
  local keys = prefix .. 'lkeys'
  local ready = prefix .. 'lready'
  local waiting = prefix .. 'lwait'
  for _, lk in ipairs(redis.call('ZRANGEBYSCORE', waiting, '-inf', now,
      'LIMIT', 0, 1000)) do
    redis.call('ZREM', waiting, lk)
    redis.call('HSET', keys, lk, 'r')
    redis.call('RPUSH', ready, lk)
  end
  local popped = {}
  local taken = {}
  local n = 0
  -- Every turn of the loop either pops a job or takes a key out of
  -- 'lready' (held back, or out of jobs): bounded by wanted plus the keys
  -- whose state changed.
  while n < wanted do
    local lk = redis.call('LPOP', ready)
    if not lk then
      break
    end
    local kq = prefix .. 'kq:' .. lk
    local t = taken[lk] or 0
    local state = 'r'
    if limit.concurrency and
        redis.call('SCARD', prefix .. 'krun:' .. lk) + t >= limit.concurrency then
      state = 'b'
    elseif limit.rate then
      local window = prefix .. 'kwin:' .. lk
      local at = window_now(window, now)
      if t == 0 then
        redis.call('ZREMRANGEBYSCORE', window, '-inf', at - limit.per)
      end
      if redis.call('ZCARD', window) + t >= limit.rate then
        state = 'w'
        redis.call('ZADD', waiting, at + window_opens(window, limit, at, t), lk)
      end
    end
    if state == 'r' then
      local top = redis.call('ZPOPMIN', kq)
      while top[1] and redis.call('ZREM', prefix .. 'queued', top[1]) == 0 do
        -- Left behind by a purge or kill of the queued job: skip it.
        top = redis.call('ZPOPMIN', kq)
      end
      if top[1] then
        popped[#popped + 1] = top[1]
        popped[#popped + 1] = top[2]
        taken[lk] = t + 1
        n = n + 1
        if redis.call('EXISTS', kq) == 1 then
          redis.call('RPUSH', ready, lk)
        else
          redis.call('HDEL', keys, lk)
        end
      else
        redis.call('HDEL', keys, lk)
      end
    else
      redis.call('HSET', keys, lk, state)
    end
  end
  return popped
end

-- Count a job a claim has just leased against the limits.
local function limit_started(limit, key, id, now)
  if limit.per_key then
    local lk = redis.call('HGET', key, 'limit_key') or ''
    redis.call('SADD', prefix .. 'krun:' .. lk, id)
    redis.call('HSET', key, 'lk', lk)
    if limit.rate then
      local window = prefix .. 'kwin:' .. lk
      local at = window_now(window, now)
      redis.call('ZADD', window, at, id .. ':' .. at)
      redis.call('PEXPIRE', window, limit.per)
    end
  elseif limit.rate then
    redis.call('ZADD', prefix .. 'window', now, id .. ':' .. now)
  end
end

-- After a claim that leased 'leased' of 'asked' jobs: whether the limits
-- held it back, and then when to claim again (ms from now; 0: when a
-- running job finishes, which wakes the consumers).  Keeps the throttle
-- record.  Returns nil when the limits did not hold the claim back.
local function limit_wait(limit, now, leased, asked)
  local wait = nil
  if leased < asked then
    if limit.per_key then
      if redis.call('HLEN', prefix .. 'lkeys') > 0 then
        wait = 0
        local first = redis.call('ZRANGE', prefix .. 'lwait', 0, 0,
          'WITHSCORES')
        if first[2] then
          wait = math.max(1, tonumber(first[2]) - now)
        end
      end
    elseif redis.call('ZCARD', prefix .. 'queued') > 0 then
      local window = prefix .. 'window'
      if limit.rate then
        redis.call('PEXPIRE', window, limit.per)
        if redis.call('ZCARD', window) >= limit.rate then
          wait = window_opens(window, limit, now, 0)
        end
      end
      if not wait and limit.concurrency and
          redis.call('ZCARD', prefix .. 'running') >= limit.concurrency then
        wait = 0
      end
    end
  elseif limit.rate and not limit.per_key then
    redis.call('PEXPIRE', prefix .. 'window', limit.per)
  end
  local throttle = prefix .. 'throttle'
  if wait then
    redis.call('HSETNX', throttle, 'since', now)
  else
    local since = redis.call('HGET', throttle, 'since')
    if since then
      redis.call('HINCRBY', throttle, 'total', math.max(0, now - tonumber(since)))
      redis.call('HDEL', throttle, 'since')
    end
  end
  return wait
end
-- == end of limits ========================================================

-- Check that the caller still holds the lease on a running job.
-- Returns nil and the job's 'server' field (false when it has none) when
-- it does, else the error code.
local function check_lease(id, lease)
  local key = jobkey(id)
  local fields = redis.call('HMGET', key, 'state', 'lease', 'server')
  if not fields[1] then
    return 'not_found'
  end
  if fields[1] == 'cancelled' then
    return 'cancelled'
  end
  if fields[1] ~= 'running' or fields[2] ~= lease then
    return 'lease_lost'
  end
  return nil, fields[3]
end
