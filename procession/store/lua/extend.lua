-- extend.lua: push back the expiry of leases the caller holds.
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  now (ms)
-- then 3 values per job: id, lease token, seconds from now
--
-- Returns per job {'ok', new expiry ms} or {'not_found'|'lease_lost', 0}.
local now = tonumber(ARGV[1])
local replies = {}
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  local problem = check_lease(id, ARGV[i + 1])
  if problem then
    replies[#replies + 1] = {problem, 0}
  else
    local expiry = now + math.floor(tonumber(ARGV[i + 2]) * 1000)
    redis.call('ZADD', prefix .. 'running', expiry, id)
    replies[#replies + 1] = {'ok', expiry}
  end
end
return replies
