-- history.lua: processed and failed jobs per period, from the per-minute
-- counters (minute:<m>), for the operator UI's charts.  Read only.
--
-- KEYS[1]  the queue's key prefix
-- ARGV[1]  the first minute (ms since the epoch / 60000)
-- ARGV[2]  how many periods
-- ARGV[3]  minutes per period (1: per minute, 60: per hour)
--
-- Returns processed and failed of each period in turn, oldest first:
-- {p1, f1, p2, f2, ...}.  A minute without a counter (no job finished in
-- it, or older than the counters' two days) counts 0.
local first = tonumber(ARGV[1])
local periods = tonumber(ARGV[2])
local size = tonumber(ARGV[3])
local reply = {}
for i = 0, periods - 1 do
  local processed, failed = 0, 0
  for m = first + i * size, first + (i + 1) * size - 1 do
    local v = redis.call('HMGET', prefix .. 'minute:' .. m, 'processed', 'failed')
    processed = processed + tonumber(v[1] or 0)
    failed = failed + tonumber(v[2] or 0)
  end
  reply[#reply + 1] = processed
  reply[#reply + 1] = failed
end
return reply
