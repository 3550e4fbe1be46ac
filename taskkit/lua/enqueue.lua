-- Enqueue one ARQ job with idempotency and backpressure, atomically (admit() comes from admit.lua).
-- KEYS: 1 arq queue zset, 2 job key, 3 result key, 4 idempotency key, 5 backpressure hash,
--       6 queues set, 7 stats hash
-- ARGV: 1 job_id, 2 job bytes, 3 score ms, 4 job key ttl ms, 5 idempotency window ms (0 = none),
--       6 high, 7 low, 8 max age ms (0 = off), 9 now ms, 10 queue name,
--       11 min retry-after ms, 12 max retry-after ms, 13 check backpressure (1/0)
-- Returns {status, job_id, retry_after_ms, depth, oldest_age_ms}
--   status 1 created, 0 duplicate (job queued/retrying), 2 duplicate (recently done), -1 queue full
local now = tonumber(ARGV[9])
local use_idem = tonumber(ARGV[5]) > 0

if use_idem then
  local existing = redis.call('GET', KEYS[4])
  if existing then
    if redis.call('EXISTS', KEYS[2]) == 1 then
      return {0, existing, 0, 0, 0}
    end
    return {2, existing, 0, 0, 0}
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {0, ARGV[1], 0, 0, 0}
end

local depth = 0
local age = 0
if tonumber(ARGV[13]) == 1 then
  local ok, ra
  ok, ra, depth, age = admit(KEYS[5], KEYS[1], 1, now, tonumber(ARGV[6]), tonumber(ARGV[7]),
                             tonumber(ARGV[8]), tonumber(ARGV[11]), tonumber(ARGV[12]))
  if not ok then
    redis.call('HINCRBY', KEYS[7], 'rejected', 1)
    return {-1, '', ra, depth, age}
  end
end

redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
if use_idem then
  redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[5])
end
redis.call('SADD', KEYS[6], ARGV[10])
redis.call('HINCRBY', KEYS[7], 'enqueued', 1)
return {1, ARGV[1], 0, depth, age}
