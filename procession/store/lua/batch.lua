-- batch.lua: create, commit and reopen batches (workflow.lua has the keys).
--
-- KEYS[1]  a key prefix of the namespace ('<ns>:{batch}:'): only the
--          namespace is used
-- ARGV[1]  the action: new, commit or open
-- ARGV[2]  now (ms)           ARGV[3]  the batch's id
-- new:    ARGV[4] description, ARGV[5] on_success, ARGV[6] on_complete
--         (each '' or the callback's push values as JSON: a NewJob's 9
--         values, its queue and its created_at), ARGV[7] retention (ms:
--         how long the batch is kept once done)
--
-- new: creates the batch, open; 'exists' when the id is taken.
-- commit: no more jobs are added (until reopened); if none is pending, the
--   callbacks are pushed now.  Committing a committed batch changes
--   nothing.
-- open: a committed batch whose jobs have not all finished takes jobs
--   again (a job of the batch adding children), until committed again;
--   'illegal_state' once it is done.
-- Returns 'ok' or 'not_found', 'exists', 'illegal_state'.
local action = ARGV[1]
local now = tonumber(ARGV[2])
local bid = ARGV[3]
local bkey = batchkey(bid)
if action == 'new' then
  if redis.call('EXISTS', bkey) == 1 then
    return 'exists'
  end
  redis.call('HSET', bkey, 'id', bid, 'description', ARGV[4], 'state', 'open',
    'total', 0, 'pending', 0, 'completed', 0, 'dead', 0, 'created_at', now,
    'on_success', ARGV[5], 'on_complete', ARGV[6], 'retention', ARGV[7])
  redis.call('ZADD', NS .. ':batches', now, bid)
  return 'ok'
end
local state = redis.call('HGET', bkey, 'state')
if not state then
  return 'not_found'
end
if action == 'commit' then
  if state == 'open' then
    redis.call('HSET', bkey, 'state', 'committed', 'committed_at', now)
    batch_check(bid, now)
  end
  return 'ok'
end
if action == 'open' then
  if state == 'done' then
    return 'illegal_state'
  end
  redis.call('HSET', bkey, 'state', 'open')
  return 'ok'
end
return redis.error_reply('batch: unknown action ' .. action)
