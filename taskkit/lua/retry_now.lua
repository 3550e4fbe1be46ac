-- Run a job waiting in the retry queue now (keeps its attempt count).
-- KEYS: 1 retry index, 2 retry record, 3 arq queue zset, 4 job key, 5 in-progress key
-- ARGV: 1 job_id, 2 now ms
-- Returns 1 done, 0 not waiting for a retry, -1 running right now
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if redis.call('EXISTS', KEYS[5]) == 1 then return -1 end
if redis.call('EXISTS', KEYS[4]) == 0 or not redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
  return 0
end
redis.call('ZADD', KEYS[3], 'XX', ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], 'next_run_ms', ARGV[2])
return 1
