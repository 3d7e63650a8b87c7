-- periodic.lua: the definitions of periodic entries (a registry script:
-- no queue's keys).
--
-- KEYS[1]  <ns>:periodic, a hash: entry name -> JSON
--          {"spec": <the definition's canonical JSON text>,
--           "source": "api" | "file", "paused": 0 | 1,
--           "since": <ms: when this definition took effect>}
-- ARGV[1]  the operation, then its arguments:
--   put NAME SPEC SOURCE NOW PAUSED  (PAUSED '1', '0' or '' for as it was)
--        store a definition; an unchanged one (same spec and source) keeps
--        its 'since', so that re-reading a file moves no schedule.  One
--        whose job.queue changed removes its tick state in the old queue
--        (<ns>:{<old queue>}:periodic:NAME, see common.lua: the one key
--        this script touches outside KEYS, built from KEYS[1]'s namespace).
--        Returns 'created', 'updated' or 'unchanged'.
--   delete NAME                       returns 1, or 0 when there was none
--   pause NAME PAUSED NOW             returns 1, or 0 when there was none;
--        resuming a paused entry moves its 'since' to NOW, so that the
--        ticks that passed while it was paused are not run as missed ones
--   sync NOW then NAME SPEC pairs     the entries of the --periodic file:
--        each is put (source 'file'), and every other entry from the file
--        is deleted.  Returns {created, updated, deleted}.
local key = KEYS[1]
local op = ARGV[1]
local NS = string.sub(key, 1, #key - #':periodic')

local function queue_of(spec)
  return cjson.decode(spec).job.queue or 'default'
end

local function put(name, spec, source, now, paused)
  local old = redis.call('HGET', key, name)
  local entry = {spec = spec, source = source, paused = 0, since = now}
  local outcome = 'created'
  if old then
    local o = cjson.decode(old)
    entry.paused = o.paused
    outcome = 'updated'
    if o.spec == spec and o.source == source then
      entry.since = o.since
      outcome = 'unchanged'
    elseif queue_of(o.spec) ~= queue_of(spec) then
      redis.call('DEL', NS .. ':{' .. queue_of(o.spec) .. '}:periodic:' .. name)
    end
  end
  if paused == '1' then
    entry.paused = 1
  elseif paused == '0' then
    entry.paused = 0
  end
  local text = cjson.encode(entry)
  if text ~= old then
    redis.call('HSET', key, name, text)
  end
  return outcome
end

if op == 'put' then
  return put(ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6])
elseif op == 'delete' then
  return redis.call('HDEL', key, ARGV[2])
elseif op == 'pause' then
  local old = redis.call('HGET', key, ARGV[2])
  if not old then
    return 0
  end
  local o = cjson.decode(old)
  local paused = tonumber(ARGV[3])
  if o.paused == 1 and paused == 0 then
    o.since = tonumber(ARGV[4])
  end
  o.paused = paused
  redis.call('HSET', key, ARGV[2], cjson.encode(o))
  return 1
elseif op == 'sync' then
  local now = tonumber(ARGV[2])
  local wanted = {}
  local counts = {0, 0, 0}
  for i = 3, #ARGV, 2 do
    wanted[ARGV[i]] = true
    local outcome = put(ARGV[i], ARGV[i + 1], 'file', now, '')
    if outcome == 'created' then
      counts[1] = counts[1] + 1
    elseif outcome == 'updated' then
      counts[2] = counts[2] + 1
    end
  end
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    if not wanted[all[i]] and cjson.decode(all[i + 1]).source == 'file' then
      redis.call('HDEL', key, all[i])
      counts[3] = counts[3] + 1
    end
  end
  return counts
end
return redis.error_reply('unknown operation ' .. tostring(op))
