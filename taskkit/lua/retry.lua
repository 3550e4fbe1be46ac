-- Record a job's failed attempt in the retry queue and keep its ARQ keys alive until the next attempt.
-- ARQ sets the job key TTL once at enqueue (+1 day) and the try counter to 88400 s; a retry further out
-- would run as "job expired", so every TTL is raised (never lowered) to cover the next run.
-- KEYS: 1 retry index zset, 2 retry record hash, 3 arq job key, 4 arq retry-counter key,
--       5 idempotency key, 6 stats hash
-- ARGV: 1 job_id, 2 next run ms, 3 keep ms, 4 now ms, 5 has idempotency key (1/0), 6.. field/value pairs
local keep = tonumber(ARGV[3])
redis.call('HSETNX', KEYS[2], 'first_failed_ms', ARGV[4])
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('PEXPIRE', KEYS[2], keep)
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local function extend(key)
  local ttl = redis.call('PTTL', key)
  if ttl >= 0 and ttl < keep then redis.call('PEXPIRE', key, keep) end
end
extend(KEYS[3])
extend(KEYS[4])
if tonumber(ARGV[5]) == 1 then extend(KEYS[5]) end
redis.call('HINCRBY', KEYS[6], 'retried', 1)
return redis.call('PTTL', KEYS[3])
