-- state_page.lua: one page of a queue's jobs in one state, read from that
-- state's own zset in its order (the operator UI's state pages), so that a
-- page costs time in proportion to the page, not to the queue's history.
-- Read only.
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  the state's zset: queued, scheduled, retrying or dead
-- ARGV[2]  'asc' (by score, then member) or 'desc' (the reverse)
-- ARGV[3]  the score of the position to continue after ('' to start)
-- ARGV[4]  the member of that position
-- ARGV[5]  the most jobs to return
-- ARGV[6]  the most entries to examine (bounds a call whose type filter
--          matches few jobs)
-- ARGV[7]  the state the jobs must be in (the zset's own)
-- ARGV[8]  only jobs of this type ('' for any)
--
-- A position is an entry of the zset: the walk resumes just after it, by
-- its rank when the entry is still there, else by a binary search among
-- the entries of its score (members of one score are in byte order), so a
-- job that stays in the state throughout is never skipped or repeated.
-- Returns {last score, last member, score, member, job, score, member,
-- job, ...}: the last entry examined ('' and '' when the zset ran out),
-- and each job found with its entry, as its hash's flat field/value list.
local key = prefix .. ARGV[1]
local desc = ARGV[2] == 'desc'
local limit = tonumber(ARGV[5])
local budget = tonumber(ARGV[6])
local want_state = ARGV[7]
local want_type = ARGV[8]

local start = 0
if ARGV[3] ~= '' then
  local score, member = ARGV[3], ARGV[4]
  local here = redis.call('ZSCORE', key, member)
  if here and tonumber(here) == tonumber(score) then
    if desc then
      start = redis.call('ZREVRANK', key, member) + 1
    else
      start = redis.call('ZRANK', key, member) + 1
    end
  else
    -- The entry has left: find the first entry after it among those of
    -- its score ([lo, hi) in walking order).
    local lo, hi
    if desc then
      lo = redis.call('ZCOUNT', key, '(' .. score, '+inf')
      hi = redis.call('ZCOUNT', key, score, '+inf')
    else
      lo = redis.call('ZCOUNT', key, '-inf', '(' .. score)
      hi = redis.call('ZCOUNT', key, '-inf', score)
    end
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      local entry
      if desc then
        entry = redis.call('ZREVRANGE', key, mid, mid)[1]
      else
        entry = redis.call('ZRANGE', key, mid, mid)[1]
      end
      if (desc and entry >= member) or (not desc and entry <= member) then
        lo = mid + 1
      else
        hi = mid
      end
    end
    start = lo
  end
end

local reply = {'', ''}
local examined = 0
while #reply < 2 + 3 * limit and examined < budget do
  local n = math.min(200, budget - examined)
  local entries
  if desc then
    entries = redis.call('ZREVRANGE', key, start, start + n - 1, 'WITHSCORES')
  else
    entries = redis.call('ZRANGE', key, start, start + n - 1, 'WITHSCORES')
  end
  for i = 1, #entries, 2 do
    local member, score = entries[i], entries[i + 1]
    examined = examined + 1
    reply[1], reply[2] = score, member
    local id = member
    if ARGV[1] == 'queued' then
      id = string.sub(member, 17)
    end
    local fields = redis.call('HMGET', jobkey(id), 'state', 'type')
    if fields[1] == want_state and (want_type == '' or fields[2] == want_type) then
      reply[#reply + 1] = score
      reply[#reply + 1] = member
      reply[#reply + 1] = redis.call('HGETALL', jobkey(id))
      if #reply == 2 + 3 * limit then
        break
      end
    end
  end
  if #entries < 2 * n and #reply < 2 + 3 * limit then
    reply[1], reply[2] = '', ''
    break
  end
  start = start + #entries / 2
end
return reply
