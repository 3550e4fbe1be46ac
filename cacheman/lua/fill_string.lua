-- Read-through step 2 (string entries): write only if our lease is still the current one.
-- An invalidation deletes the lease, so a fill that began before it cannot write its old value.
-- KEYS[1] value, KEYS[2] lease, KEYS[3] floor
-- ARGV[1] token, ARGV[2] payload, ARGV[3] px, ARGV[4] version ('' = not versioned, e.g. a negative entry)
-- Returns 1 written, 0 lease lost, -1 older than a version an applied event announced.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if ARGV[4] ~= '' then
  local floor = tonumber(redis.call('GET', KEYS[3]))
  if floor and tonumber(ARGV[4]) < floor then return -1 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
