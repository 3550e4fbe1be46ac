-- Move a job to the dead-letter queue and keep the queue bounded by count and age.
-- With an empty job_id it only trims (the health loop calls it so old entries age out).
-- Record keys are built from ARGV[4] (one prefix per queue): ARQ is single-instance/Sentinel only,
-- so these undeclared keys are fine here.
-- KEYS: 1 dlq index zset, 2 dlq record hash, 3 retry index, 4 retry record, 5 idempotency key, 6 stats
-- ARGV: 1 job_id, 2 now ms, 3 max count, 4 record prefix, 5 max age ms, 6 has idempotency (1/0),
--       7.. field/value pairs
-- One call removes at most TRIM_BATCH entries per bound (age, count), so a huge backlog is trimmed over
-- several calls instead of blocking Redis in one.
local TRIM_BATCH = 1000
local now = tonumber(ARGV[2])
if ARGV[1] ~= '' then
  local first = redis.call('HGET', KEYS[4], 'first_failed_ms') or ARGV[2]
  redis.call('DEL', KEYS[2])
  local fields = {'first_failed_ms', first, 'died_ms', ARGV[2]}
  for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[2], unpack(fields))
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('DEL', KEYS[4])
  if tonumber(ARGV[6]) == 1 then redis.call('DEL', KEYS[5]) end
  redis.call('HINCRBY', KEYS[6], 'dead', 1)
end
local trimmed = 0
local max_age = tonumber(ARGV[5])
if max_age > 0 then
  local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - max_age, 'LIMIT', 0, TRIM_BATCH)
  for _, id in ipairs(old) do
    redis.call('DEL', ARGV[4] .. id)
    redis.call('ZREM', KEYS[1], id)
  end
  trimmed = trimmed + #old
end
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if over > 0 then
  local ids = redis.call('ZRANGE', KEYS[1], 0, math.min(over, TRIM_BATCH) - 1)
  for _, id in ipairs(ids) do
    redis.call('DEL', ARGV[4] .. id)
    redis.call('ZREM', KEYS[1], id)
  end
  trimmed = trimmed + #ids
end
return trimmed
