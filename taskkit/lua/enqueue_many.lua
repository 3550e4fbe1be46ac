-- Enqueue a batch of ARQ jobs of one queue with per-job idempotency and ONE watermark decision, atomically
-- (admit() comes from admit.lua). All or nothing: refused, it writes no job, queue entry or marker.
-- Not cluster-safe by design: it touches every job's keys at once; taskkit's queues live on one Redis node.
-- KEYS: 1 arq queue zset, 2 backpressure hash, 3 queues set, 4 stats hash,
--       then per job i = 0..n-1: 5+3i job key, 6+3i result key, 7+3i idempotency key
-- ARGV: 1 now ms, 2 queue name, 3 score ms, 4 job key ttl ms, 5 idempotency window ms,
--       6 high, 7 low, 8 max age ms (0 = off), 9 min retry-after ms, 10 max retry-after ms,
--       11 check backpressure (1/0), then per job i: 12+3i job_id, 13+3i job bytes, 14+3i use idempotency (1/0)
-- The caller sends each job id once (duplicates within the request are resolved before the call).
-- Returns {status, retry_after_ms, depth, oldest_age_ms, state_1, job_id_1, ..., state_n, job_id_n}
--   status 1 done, -1 queue full (nothing written, no per-job part);
--   state 1 created, 0 duplicate (job queued/retrying; job_id is that job), 2 duplicate (recently done)
local now = tonumber(ARGV[1])
local n = (#KEYS - 4) / 3
local out = {1, 0, 0, 0}
local new = {}

for i = 0, n - 1 do
  local job_key, idem_key = KEYS[5 + 3 * i], KEYS[7 + 3 * i]
  local job_id = ARGV[12 + 3 * i]
  local state, existing = 1, job_id
  if ARGV[14 + 3 * i] == '1' then
    local marker = redis.call('GET', idem_key)
    if marker then
      existing = marker
      state = redis.call('EXISTS', job_key) == 1 and 0 or 2
    end
  end
  if state == 1 and redis.call('EXISTS', job_key) == 1 then
    state = 0
  end
  out[5 + 2 * i] = state
  out[6 + 2 * i] = existing
  if state == 1 then new[#new + 1] = i end
end

if #new > 0 and ARGV[11] == '1' then
  local ok, ra, depth, age = admit(KEYS[2], KEYS[1], #new, now, tonumber(ARGV[6]), tonumber(ARGV[7]),
                                   tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]))
  if not ok then
    redis.call('HINCRBY', KEYS[4], 'rejected', 1)
    return {-1, ra, depth, age}
  end
  out[3], out[4] = depth, age
end

for _, i in ipairs(new) do
  local job_id = ARGV[12 + 3 * i]
  redis.call('DEL', KEYS[6 + 3 * i])
  redis.call('SET', KEYS[5 + 3 * i], ARGV[13 + 3 * i], 'PX', ARGV[4])
  redis.call('ZADD', KEYS[1], ARGV[3], job_id)
  if ARGV[14 + 3 * i] == '1' then
    redis.call('SET', KEYS[7 + 3 * i], job_id, 'PX', ARGV[5])
  end
end
if #new > 0 then
  redis.call('SADD', KEYS[3], ARGV[2])
  redis.call('HINCRBY', KEYS[4], 'enqueued', #new)
end
return out
