-- claim.lua: lease up to N queued jobs of one queue, best first.
--
-- KEYS[1]  the queue's key prefix
-- KEYS[2]  optional: <prefix>held:<server>, the held set of the claiming
--          server, given when the leases live and die with the workers'
--          connections to that server (TCP workers); left out when the
--          worker may ack through any server (HTTP polls)
-- ARGV[1]  now (ms)           ARGV[2]  the claiming server's id
-- ARGV[3]  with KEYS[2], who holds the jobs when not the claiming server:
--          a lease owner (a Faktory worker process) whose jobs come back
--          when it is lost rather than when a server is; '' otherwise
-- then 2 values per wanted job: the worker's name, the new lease token
--
-- Returns one row per job leased (fewer than asked when the queue ran
-- out, none while it is paused): its id, then the fields listed in
-- procession.core.job.ClaimedJob.from_claim: wire, attempt (as counted
-- by this claim), timeout, enqueued_at.  Row i belongs to the i-th
-- worker/lease pair.  Each claim counts as an attempt.  With KEYS[2],
-- each job leased goes into that held set and names the server (ARGV[2],
-- or the owner ARGV[3]) in its hash ('server'), so that it comes back
-- soon after the server (or owner) is lost (server_lost.lua).
-- A claim that comes back short puts the server in the queue's waiting
-- set (its consumers now wait for a wake-up, which pushes then publish);
-- one that fills every slot takes it out (see common.lua).
--
-- Limits (docs/limits.rst): a queue with limits leases only what they
-- allow, and when they held the claim back, the reply ends with one
-- integer after the rows: when to claim again, in ms from now (0: when a
-- running job finishes, which wakes the consumers).
--
-- Expiring jobs: a queued job past its expires_at is not leased but ends
-- 'expired' (counted in stats as 'expired'), and the claim takes the next
-- one in its place.  Unique jobs: a job whose lock frees at start frees
-- it here.
local now = tonumber(ARGV[1])
local wanted = (#ARGV - 3) / 2
if wanted < 1 then
  return {}
end
if redis.call('EXISTS', prefix .. 'paused') == 1 then
  redis.call('SADD', prefix .. 'waiting', ARGV[2])
  return {}
end
-- limits: how many the queue's limits allow
local limit = queue_limits()
local asked = wanted
if limit and limit.rate and not limit.per_key then
  -- Servers' clocks are read before their claims reach Redis, so a claim
  -- may run after another that read a later time: a rate window's starts
  -- stay in order (and the window exact) by never counting time back.
  local newest = redis.call('ZRANGE', prefix .. 'window', -1, -1, 'WITHSCORES')
  if newest[2] then
    now = math.max(now, tonumber(newest[2]))
  end
end
if limit and not limit.per_key then
  wanted = allowance(limit, now, wanted)
end
local held = KEYS[2]
local server = nil
if held then
  server = ARGV[3]
  if server == '' then
    server = ARGV[2]
  end
end
local function pop(n)
  if limit and limit.per_key then
    return pop_by_key(limit, now, n)
  elseif n > 0 then
    return redis.call('ZPOPMIN', prefix .. 'queued', n)
  end
  return {}
end
local popped = pop(wanted)
local rows = {}
-- expiring jobs: jobs past their expires_at taken so far (at most
-- MAX_EXPIRED_PER_CLAIM per call, so that one call stays short)
local expired = 0
while #popped > 0 do
  local expired_before = expired
  for i = 1, #popped, 2 do
    local id = string.sub(popped[i], 17)
    local key = jobkey(id)
    local slot = 4 + 2 * #rows
    local fields = redis.call('HMGET', key, 'wire', 'attempt', 'timeout',
      'enqueued_at', 'expires_at', 'uuntil')
    if fields[5] and tonumber(fields[5]) <= now then
      expire_job(id, now)
      expired = expired + 1
    else
      local attempt = tostring(tonumber(fields[2]) + 1)
      if server then
        redis.call('HSET', key, 'state', 'running', 'started_at', now,
          'worker', ARGV[slot], 'lease', ARGV[slot + 1], 'attempt', attempt,
          'server', server)
        redis.call('SADD', held, id)
      else
        redis.call('HSET', key, 'state', 'running', 'started_at', now,
          'worker', ARGV[slot], 'lease', ARGV[slot + 1], 'attempt', attempt)
      end
      redis.call('ZADD', prefix .. 'running', now + math.floor(tonumber(fields[3]) * 1000), id)
      if limit then
        limit_started(limit, key, id, now)
      end
      -- unique jobs: a lock held until start frees now
      if fields[6] == 'start' then
        free_unique(id, 'start')
      end
      local row = {id, fields[1], attempt, fields[3], fields[4]}
      rows[#rows + 1] = row
    end
  end
  -- expiring jobs: take more in the place of the expired ones
  if expired == expired_before or #rows >= wanted
      or expired >= MAX_EXPIRED_PER_CLAIM then
    break
  end
  popped = pop(wanted - #rows)
end
if expired > 0 then
  count('expired', now, expired)
end
if #rows < asked then
  redis.call('SADD', prefix .. 'waiting', ARGV[2])
else
  redis.call('SREM', prefix .. 'waiting', ARGV[2])
end
if limit then
  local wait = limit_wait(limit, now, #rows, asked)
  if wait then
    rows[#rows + 1] = wait
  end
end
return rows
