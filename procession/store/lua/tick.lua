-- tick.lua: claim ticks of a periodic entry and push their jobs, at once.
--
-- KEYS[1]  the entry's queue's key prefix (the entry's tick state,
--          <prefix>periodic:<name>, shares the queue's hash tag)
-- KEYS[2]  the id index, <ns>:ids (as push.lua's: a job id that another
--          queue holds is not pushed)
-- KEYS[3]  the definitions, <ns>:periodic (periodic.lua): while the
--          entry's definition names another queue (moved after this
--          server read it), nothing is pushed and no tick state written
-- ARGV[1]  now (ms)           ARGV[2]  the wake channel
-- ARGV[3]  the queue's name   ARGV[4]  the wake message: the queue's name
--          alone, so that every server wakes its consumers, this one too
-- ARGV[5]  the entry's name
-- ARGV[6]  'tick': claim ticks; 'now': push a job outside the schedule
--          (run now), which claims no tick
-- ARGV[7]  ticks passed without a job that this claim accounts for
--          (counted as skipped only when the claim takes a tick)
-- then 16 values per tick, oldest first: the tick's time (ms, 0 for 'now'),
--   then the job's 15 push values (see push.lua; the id is
--   '<name>@<tick time>'; its workflow value and unique lock are not used)
--
-- A tick is claimed when it is later than the last tick claimed: the
-- check and the push are one script, so any number of servers running the
-- same schedule push one job per tick, and a tick replayed later (a slow
-- server) changes nothing.  A job id that exists already is left alone.
-- Returns {the last tick claimed now (ms, 0 if never), jobs pushed}.
local now = tonumber(ARGV[1])
local queue = ARGV[3]
local state = prefix .. 'periodic:' .. ARGV[5]
local definition = redis.call('HGET', KEYS[3], ARGV[5])
if definition
    and (cjson.decode(cjson.decode(definition).spec).job.queue or 'default') ~= queue then
  return {0, 0}
end
local last = tonumber(redis.call('HGET', state, 'tick') or 0)
local pushed = 0
local queued = 0
local claimed = 0

local function insert(i)
  local id = ARGV[i]
  local key = jobkey(id)
  local owner = redis.call('HGET', KEYS[2], id)
  if (owner and owner ~= queue) or redis.call('EXISTS', key) == 1 then
    return false
  end
  redis.call('HSET', KEYS[2], id, queue)
  local run_at = tonumber(ARGV[i + 7])
  redis.call('HSET', key,
    'id', id, 'type', ARGV[i + 1], 'queue', queue, 'args', ARGV[i + 2],
    'priority', ARGV[i + 3], 'max_attempts', ARGV[i + 4],
    'timeout', ARGV[i + 5], 'meta', ARGV[i + 6], 'attempt', 0,
    'created_at', now, 'wire', ARGV[i + 8], 'periodic', ARGV[5])
  if ARGV[i + 9] ~= '' then
    redis.call('HSET', key, 'limit_key', ARGV[i + 9])
  end
  if tonumber(ARGV[i + 14]) > 0 then
    redis.call('HSET', key, 'expires_at', ARGV[i + 14])
  end
  redis.call('ZADD', prefix .. 'created', 0, created_member(id, now))
  if run_at > now then
    redis.call('HSET', key, 'state', 'scheduled', 'run_at', run_at)
    redis.call('ZADD', prefix .. 'scheduled', run_at, id)
  else
    enqueue(id, now, false)
    queued = queued + 1
  end
  pushed = pushed + 1
  redis.call('HSET', state, 'job', id, 'run_at', now)
  return true
end

for i = 8, #ARGV, 16 do
  local tick = tonumber(ARGV[i])
  if ARGV[6] == 'now' then
    insert(i + 1)
  elseif tick > last then
    last = tick
    claimed = claimed + 1
    insert(i + 1)
  end
end
if claimed > 0 then
  redis.call('HSET', state, 'tick', last)
  redis.call('HINCRBY', state, 'runs', claimed)
  if tonumber(ARGV[7]) > 0 then
    redis.call('HINCRBY', state, 'skipped', tonumber(ARGV[7]))
  end
end
if pushed > 0 then
  count('pushed', now, pushed)
end
if queued > 0 then
  wake(ARGV[2], ARGV[4])
end
return {last, pushed}
