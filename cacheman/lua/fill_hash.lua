-- Read-through step 2 (hash entries): swap a hash built under a temporary key into place, only if our
-- lease is still current. RENAME is atomic, so a reader never sees a half-built set.
-- KEYS[1] value, KEYS[2] lease, KEYS[3] floor, KEYS[4] tmp (built by the caller in the same pipeline)
-- ARGV[1] token, ARGV[2] px, ARGV[3] version ('' = not versioned), ARGV[4] '1' = max-merge numeric fields
--   already in the value (read states written by events while the fill was in flight)
-- Returns 1 written, 0 lease lost, -1 older than an applied event, -2 temporary key missing.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  redis.call('DEL', KEYS[4])
  return 0
end
redis.call('DEL', KEYS[2])
if ARGV[3] ~= '' then
  local floor = tonumber(redis.call('GET', KEYS[3]))
  if floor and tonumber(ARGV[3]) < floor then
    redis.call('DEL', KEYS[4])
    return -1
  end
end
if redis.call('EXISTS', KEYS[4]) == 0 then return -2 end
if ARGV[4] == '1' then
  local old = redis.call('HGETALL', KEYS[1])
  for i = 1, #old, 2 do
    local f = old[i]
    if string.sub(f, 1, 1) ~= '#' then
      local cur = tonumber(redis.call('HGET', KEYS[4], f))
      local seen = tonumber(old[i + 1])
      if cur and seen and seen > cur then redis.call('HSET', KEYS[4], f, old[i + 1]) end
    end
  end
end
redis.call('RENAME', KEYS[4], KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
