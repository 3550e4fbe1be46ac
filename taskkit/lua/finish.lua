-- FastWorker: record the end of many jobs in one step, as arq.worker.Worker.finish_job /
-- finish_failed_job do for one job each.
-- KEYS: 1 arq queue zset, 2 arq abort zset
-- ARGV: 1 in-progress key prefix, 2 job key prefix, 3 retry key prefix, 4 result key prefix, then groups
--   of 6 per job: job_id, finished (1: done, result kept; 0: to run again), result data ('' = none),
--   result ms (0 = no expiry), score increment (0 = none), keep in-progress ms (0 = delete the key)
for i = 5, #ARGV, 6 do
  local id = ARGV[i]
  local ip = ARGV[1] .. id
  local keep_ip = tonumber(ARGV[i + 5])
  if keep_ip > 0 then
    redis.call('PEXPIRE', ip, keep_ip)
  else
    redis.call('DEL', ip)
  end
  if ARGV[i + 1] == '1' then
    local data = ARGV[i + 2]
    if data ~= '' then
      local px = tonumber(ARGV[i + 3])
      if px > 0 then
        redis.call('SET', ARGV[4] .. id, data, 'PX', px)
      else
        redis.call('SET', ARGV[4] .. id, data)
      end
    end
    redis.call('DEL', ARGV[3] .. id, ARGV[2] .. id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[1], id)
  else
    local incr = tonumber(ARGV[i + 4])
    if incr ~= 0 then
      redis.call('ZINCRBY', KEYS[1], incr, id)
    end
  end
end
return (#ARGV - 4) / 6
