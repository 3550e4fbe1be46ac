-- read.updated: max-merge a user's last_read_seq for one room in the user's read-state hash.
-- KEYS[1] reads hash; ARGV[1] room, ARGV[2] seq, ARGV[3] px.
-- A built hash ('#f' present) without the room means the user is not in it: no-op. A hash not built yet
-- keeps the value so that a fill in flight max-merges it in (fill_hash.lua, merge mode).
-- Returns 1 changed, 0 no-op.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  if tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
if redis.call('HEXISTS', KEYS[1], '#f') == 1 then return 0 end
local existed = redis.call('EXISTS', KEYS[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if existed == 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
