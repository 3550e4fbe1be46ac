-- Read-through step 1: return the fresh value, or grant a fill lease, or say someone else is filling.
-- KEYS[1] value, KEYS[2] lease
-- ARGV[1] token, ARGV[2] lease ttl ms, ARGV[3] now ms, ARGV[4] kind ('s' string | 'h' hash), ARGV[5] '1' = ignore a fresh value
-- Returns {status, raw}: status 'hit' | 'lease' | 'wait'; raw is the stored value even when expired (stale-if-error).
local raw
local fresh_until
if ARGV[4] == 'h' then
  raw = redis.call('HGETALL', KEYS[1])
  if #raw == 0 then
    raw = false
  else
    for i = 1, #raw, 2 do
      if raw[i] == '#f' then fresh_until = tonumber(raw[i + 1]) end
    end
  end
else
  raw = redis.call('GET', KEYS[1])
  if raw then fresh_until = tonumber(string.match(raw, '^(%d+)')) end
end
if ARGV[5] ~= '1' and raw and fresh_until and fresh_until > tonumber(ARGV[3]) then
  return {'hit', raw}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'lease', raw}
end
return {'wait', raw}
