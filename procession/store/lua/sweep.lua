-- sweep.lua: the periodic upkeep of one queue.  Safe to run from any
-- number of servers at once: each step moves only what is due.
--
-- KEYS[1]  the queue's key prefix
-- KEYS[2]  the id index, <ns>:ids (see common.lua)
-- ARGV[1]  now (ms)           ARGV[2]  the wake channel
-- ARGV[3]  the queue's name   ARGV[4]  the most jobs to move per step
-- ARGV[5]  keep completed and cancelled jobs this long (ms)
-- ARGV[6]  keep dead jobs this long (ms)
-- ARGV[7]  keep at most this many dead jobs
-- ARGV[8]  the error recorded for an expired lease (JSON text)
--
-- 1. promote scheduled and retrying jobs that are due to queued;
-- 2. take back running jobs whose lease expired (as release.lua does);
-- 3. remove finished jobs past their retention (with their error history
--    and their entry in the created index).
-- Returns {promoted, reclaimed, removed}.
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[4])
local promoted = 0
local reclaimed = 0
local removed = 0
local woken = 0

for _, set in ipairs({'scheduled', 'retrying'}) do
  local due = redis.call('ZRANGEBYSCORE', prefix .. set, '-inf', now,
    'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    redis.call('ZREM', prefix .. set, id)
    enqueue(id, now, false)
    promoted = promoted + 1
  end
end

local expired = redis.call('ZRANGEBYSCORE', prefix .. 'running', '-inf', now,
  'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  if release_job(id, now, ARGV[8], false) == 'queued' then
    woken = woken + 1
  end
  reclaimed = reclaimed + 1
end

local function forget(set, ids)
  for _, id in ipairs(ids) do
    erase(id, KEYS[2])
    redis.call('ZREM', prefix .. set, id)
    removed = removed + 1
  end
end
forget('done', redis.call('ZRANGEBYSCORE', prefix .. 'done', '-inf',
  now - tonumber(ARGV[5]), 'LIMIT', 0, limit))
forget('dead', redis.call('ZRANGEBYSCORE', prefix .. 'dead', '-inf',
  now - tonumber(ARGV[6]), 'LIMIT', 0, limit))
local extra = redis.call('ZCARD', prefix .. 'dead') - tonumber(ARGV[7])
if extra > 0 then
  forget('dead', redis.call('ZRANGE', prefix .. 'dead', 0,
    math.min(extra, limit) - 1))
end

if promoted + woken > 0 then
  wake(ARGV[2], ARGV[3])
end
wake_freed()  -- limits: a freed slot wakes the consumers
return {promoted, reclaimed, removed}
