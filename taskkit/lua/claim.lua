-- FastWorker: claim up to N ready jobs of an ARQ queue in one step, with ARQ's keys and semantics.
-- For each ready id (score <= now, oldest first) whose in-progress key is absent: set the in-progress
-- key (PX = ARQ's in-progress timeout), read the job key, INCR the retry counter and set its TTL to
-- 88400 s -- exactly what arq.worker.Worker.start_jobs + run_job do over ~5 round trips.
-- KEYS: 1 arq queue zset
-- ARGV: 1 now ms, 2 max jobs to claim, 3 max ids to scan, 4 in-progress ms,
--       5 in-progress key prefix, 6 job key prefix, 7 retry key prefix
-- Returns a flat list: job_id, score, job data (nil when the job key has expired), try, ...
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local want = tonumber(ARGV[2])
local out = {}
local n = 0
for i = 1, #ids, 2 do
  if n >= want then break end
  local id = ids[i]
  local ip = ARGV[5] .. id
  if redis.call('EXISTS', ip) == 0 then
    redis.call('SET', ip, '1', 'PX', ARGV[4])
    local rk = ARGV[7] .. id
    local try = redis.call('INCR', rk)
    redis.call('EXPIRE', rk, 88400)
    out[#out + 1] = id
    out[#out + 1] = ids[i + 1]
    out[#out + 1] = redis.call('GET', ARGV[6] .. id)
    out[#out + 1] = try
    n = n + 1
  end
end
return out
