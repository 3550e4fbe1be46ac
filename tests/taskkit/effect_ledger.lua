-- Apply a job's effect exactly once: remember the job id and add its amount in one atomic step.
-- KEYS: 1 ledger set, 2 total counter; ARGV: 1 job id, 2 amount. Returns 1 applied, 0 already applied.
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
  redis.call('INCRBY', KEYS[2], ARGV[2])
  return 1
end
return 0
