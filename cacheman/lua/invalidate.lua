-- Invalidation: delete the value and its lease in one step, so no fill that started before the change
-- can write the old value back (the stale-set race).
-- KEYS[1] value, KEYS[2] lease, KEYS[3] floor
-- ARGV[1] version announced by the event ('' = unconditional), ARGV[2] floor px, ARGV[3] kind ('s' | 'h')
-- Versioned: the floor is max-merged to the version, and an event no newer than the floor or than the
-- cached value is a no-op (duplicate or reordered). Returns 1 invalidated, 0 no-op.
if ARGV[1] == '' then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
local v = tonumber(ARGV[1])
local floor = tonumber(redis.call('GET', KEYS[3]))
if floor and v <= floor then return 0 end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
local cv
if ARGV[3] == 'h' then
  cv = tonumber(redis.call('HGET', KEYS[1], '#v'))
else
  local raw = redis.call('GET', KEYS[1])
  if raw then cv = tonumber(string.match(raw, '^%d+ %d+ (%-?%d+)|')) end
end
if cv and cv >= v then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
