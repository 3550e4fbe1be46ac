-- Delete a job waiting in the retry queue, with its ARQ keys.
-- KEYS: 1 retry index, 2 retry record, 3 arq queue zset, 4 job key, 5 arq retry key, 6 in-progress key
-- ARGV: 1 job_id
-- Returns 1 dropped, 0 not waiting for a retry, -1 running right now
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if redis.call('EXISTS', KEYS[6]) == 1 then return -1 end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4], KEYS[5], KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
