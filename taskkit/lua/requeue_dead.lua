-- Put a dead-lettered job back on its ARQ queue with a fresh attempt count, in one step.
-- KEYS: 1 dlq index, 2 dlq record, 3 arq queue zset, 4 job key, 5 result key, 6 arq retry key,
--       7 in-progress key
-- ARGV: 1 job_id, 2 job bytes, 3 score ms, 4 job ttl ms
-- Returns 1 requeued, 0 not in the dead-letter queue, -1 a job with this id is queued or running
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[4]) == 1 or redis.call('EXISTS', KEYS[7]) == 1 then return -1 end
redis.call('DEL', KEYS[5], KEYS[6])
redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
