-- member.added / member.removed / member.role_changed on a room's members hash.
-- KEYS[1] members, KEYS[2] lease, KEYS[3] floor
-- ARGV[1] op ('add' | 'remove' | 'role'), ARGV[2] user, ARGV[3] role ('' = unknown), ARGV[4] version ('' = none),
-- ARGV[5] floor px, ARGV[6] now ms
-- With the next version in sequence (cached #v + 1) the hash is patched in place; an event no newer than
-- what is applied is a no-op; anything else (gap, no version, no role) deletes value and lease.
-- Returns 2 patched, 1 invalidated, 0 no-op.
local v = tonumber(ARGV[4])
if not v then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
local floor = tonumber(redis.call('GET', KEYS[3]))
if floor and v <= floor then return 0 end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
local cv = tonumber(redis.call('HGET', KEYS[1], '#v'))
if cv and cv >= v then return 0 end
redis.call('DEL', KEYS[2])
if cv and cv + 1 == v and redis.call('HEXISTS', KEYS[1], '#nx') == 0 and (ARGV[1] == 'remove' or ARGV[3] ~= '') then
  if ARGV[1] == 'remove' then
    redis.call('HDEL', KEYS[1], ARGV[2])
  else
    redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  end
  redis.call('HSET', KEYS[1], '#v', ARGV[4], '#s', ARGV[6])
  return 2
end
redis.call('DEL', KEYS[1])
return 1
