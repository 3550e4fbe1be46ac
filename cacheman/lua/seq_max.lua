-- message.created (and fills): max-merge a room's last_seq, so duplicates and reordering cannot regress it.
-- KEYS[1] room seq; ARGV[1] seq, ARGV[2] px. Returns {changed 0|1, resulting seq}.
local cur = tonumber(redis.call('GET', KEYS[1]))
local v = tonumber(ARGV[1])
if cur and cur >= v then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {0, cur}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, v}
