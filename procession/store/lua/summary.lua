-- summary.lua: everything the statistics say about one queue, read in one
-- consistent snapshot.  Read only.
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  now (ms)
-- ARGV[2]  the most priority levels to look at for the oldest queued job
-- ARGV[3]  the most jobs to look at per priority level
--
-- Returns, in order: the sizes of queued, scheduled, retrying, running and
-- dead; 1 when paused else 0; the pushed, processed and failed totals;
-- the enqueued_at (ms) of the oldest queued job, or -1 when none is
-- queued; then processed and failed in the current minute, in the minute
-- before, summed over the 58 minutes before that, and in the minute 60
-- minutes ago (the caller weighs the partial minutes at both ends of a
-- sliding window); then the expired and unique_collisions totals.
--
-- The oldest queued job: the queued zset runs by priority, then FIFO, so
-- the job waiting longest is near the head of some priority level, but not
-- always first in it (a job given back to the queue keeps its place and
-- gets a new enqueued_at).  The script takes the smallest enqueued_at among
-- the first ARGV[3] jobs of each of the first ARGV[2] priority levels:
-- exact unless more than ARGV[3] given-back jobs sit ahead of the oldest in
-- its level, or it sits below ARGV[2] busier levels.
local now = tonumber(ARGV[1])
local max_levels = tonumber(ARGV[2])
local per_level = tonumber(ARGV[3])
local reply = {}
for _, set in ipairs({'queued', 'scheduled', 'retrying', 'running', 'dead'}) do
  reply[#reply + 1] = redis.call('ZCARD', prefix .. set)
end
reply[#reply + 1] = redis.call('EXISTS', prefix .. 'paused')
local totals = redis.call('HMGET', prefix .. 'stats', 'pushed', 'processed',
  'failed')
for i = 1, 3 do
  reply[#reply + 1] = tonumber(totals[i] or 0)
end

local queued = prefix .. 'queued'
local oldest = -1
local head = redis.call('ZRANGE', queued, 0, 0, 'WITHSCORES')
local score = head[2]
local levels = 0
while score and levels < max_levels do
  local members = redis.call('ZRANGEBYSCORE', queued, score, score, 'LIMIT',
    0, per_level)
  for _, member in ipairs(members) do
    local at = tonumber(redis.call('HGET', jobkey(string.sub(member, 17)),
      'enqueued_at'))
    if at and (oldest < 0 or at < oldest) then
      oldest = at
    end
  end
  levels = levels + 1
  local nxt = redis.call('ZRANGEBYSCORE', queued, '(' .. score, '+inf',
    'WITHSCORES', 'LIMIT', 0, 1)
  score = nxt[2]
end
reply[#reply + 1] = oldest

local minute = math.floor(now / 60000)
local function bucket(m)
  local v = redis.call('HMGET', prefix .. 'minute:' .. m, 'processed',
    'failed')
  return tonumber(v[1] or 0), tonumber(v[2] or 0)
end
local p, f = bucket(minute)
reply[#reply + 1] = p
reply[#reply + 1] = f
p, f = bucket(minute - 1)
reply[#reply + 1] = p
reply[#reply + 1] = f
local sum_p, sum_f = 0, 0
for m = minute - 59, minute - 2 do
  p, f = bucket(m)
  sum_p = sum_p + p
  sum_f = sum_f + f
end
reply[#reply + 1] = sum_p
reply[#reply + 1] = sum_f
p, f = bucket(minute - 60)
reply[#reply + 1] = p
reply[#reply + 1] = f
local more = redis.call('HMGET', prefix .. 'stats', 'expired', 'collided')
reply[#reply + 1] = tonumber(more[1] or 0)
reply[#reply + 1] = tonumber(more[2] or 0)
return reply
