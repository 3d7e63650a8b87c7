-- common.lua: helpers that procession.store puts in front of every script.
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
--   done         zset: score finish time ms, member id (completed, cancelled)
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
--   held:<srv>   set: ids of running jobs whose lease lives and dies with a
--                connection to server <srv> (TCP workers; not HTTP polls),
--                which the job's hash names in 'server'.  When that server
--                stops heartbeating, any server gives them back
--                (server_lost.lua) instead of waiting for the leases.

local prefix = KEYS[1]
local MAX_ERRORS = 10

local function jobkey(id)
  return prefix .. 'job:' .. id
end

-- Put a job (already in its hash) on the queued zset.  keep_place reuses
-- the job's old FIFO position, so a job given back by a worker does not go
-- behind jobs pushed after it.
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
  redis.call('HDEL', key, 'run_at', 'lease')
  redis.call('ZADD', prefix .. 'queued', -priority, member)
end

-- A job's member in the created index.
local function created_member(id, created_at)
  return string.format('%015d', tonumber(created_at)) .. id
end

-- Remove a job for good: its hash, its error history and its index entry.
-- The caller takes it off its state set.
local function erase(id)
  local created_at = redis.call('HGET', jobkey(id), 'created_at')
  if created_at then
    redis.call('ZREM', prefix .. 'created', created_member(id, created_at))
  end
  redis.call('DEL', jobkey(id), prefix .. 'errors:' .. id)
end

local function record_error(id, err)
  local key = prefix .. 'errors:' .. id
  redis.call('LPUSH', key, err)
  redis.call('LTRIM', key, 0, MAX_ERRORS - 1)
end

local function make_dead(id, now)
  redis.call('HSET', jobkey(id), 'state', 'dead', 'finished_at', now)
  redis.call('HDEL', jobkey(id), 'lease', 'run_at')
  redis.call('ZADD', prefix .. 'dead', now, id)
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
end

-- Remove a job from whichever state set holds it.
local function unlist(id, state)
  local key = jobkey(id)
  if state == 'queued' then
    redis.call('ZREM', prefix .. 'queued', redis.call('HGET', key, 'qm'))
  elseif state == 'running' then
    leave_running(id)
  elseif state == 'scheduled' or state == 'retrying' or state == 'dead' then
    redis.call('ZREM', prefix .. state, id)
  elseif state == 'completed' or state == 'cancelled' then
    redis.call('ZREM', prefix .. 'done', id)
  end
end

-- Take back a job from its worker (connection lost, lease expired, shut
-- down).  The attempt was counted when the job was claimed: a job that has
-- used up its attempts is dead, so a job that kills its worker every time
-- cannot loop forever.  Returns 'queued' or 'dead'.
local function take_back(id, now, err, uncount)
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
local function wake(channel, queue)
  if redis.call('EXISTS', prefix .. 'paused') == 0 then
    redis.call('PUBLISH', channel, queue)
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

-- Check that the caller still holds the lease on a running job.
-- Returns nil and the job's 'server' field (false when it has none) when
-- it does, else the error code.
local function check_lease(id, lease)
  local key = jobkey(id)
  local fields = redis.call('HMGET', key, 'state', 'lease', 'server')
  if not fields[1] then
    return 'not_found'
  end
  if fields[1] ~= 'running' or fields[2] ~= lease then
    return 'lease_lost'
  end
  return nil, fields[3]
end
