-- list.lua: read one page of a queue's jobs, newest first.  Read only.
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  the created-index member to continue after ('' to start with
--          the newest job)
-- ARGV[2]  the most jobs to return
-- ARGV[3]  the most index entries to examine (bounds the work of one call
--          when filters match few jobs)
-- ARGV[4]  only jobs in this state ('' for any)
-- ARGV[5]  only jobs of this type ('' for any)
--
-- Walks the created index from ARGV[1] towards older jobs by (created_at,
-- id), so pages never overlap and a job that exists throughout a listing
-- is never skipped, whatever is pushed or removed meanwhile.  Returns
-- {last, job, job, ...}: last is the index member examined last ('' when
-- the index ran out), each job is its hash as a flat field/value list.
local index = prefix .. 'created'
local limit = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local want_state = ARGV[4]
local want_type = ARGV[5]
local max = '+'
if ARGV[1] ~= '' then
  max = '(' .. ARGV[1]
end
local jobs = {}
local examined = 0
local last = ''
while #jobs < limit and examined < budget do
  local n = math.min(200, budget - examined)
  local members = redis.call('ZREVRANGEBYLEX', index, max, '-', 'LIMIT', 0, n)
  for _, member in ipairs(members) do
    examined = examined + 1
    last = member
    local key = jobkey(string.sub(member, 16))
    local fields = redis.call('HMGET', key, 'state', 'type')
    if fields[1] and (want_state == '' or fields[1] == want_state)
        and (want_type == '' or fields[2] == want_type) then
      jobs[#jobs + 1] = redis.call('HGETALL', key)
      if #jobs == limit then
        break
      end
    end
  end
  if #members < n and #jobs < limit then
    last = ''
    break
  end
  max = '(' .. last
end
local reply = {last}
for _, job in ipairs(jobs) do
  reply[#reply + 1] = job
end
return reply
