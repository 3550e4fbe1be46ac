-- Claim the right to write one version of each message (index_worker/guard.py).
-- KEYS: per message, its state hash and its lease key (same hash tag): s1, l1, s2, l2, ...
-- ARGV: token, lease_ms, tombstone_ttl_s, upsert_ttl_s (0 = keep), then per message: version, op ('u'|'d')
-- Returns per message: {0} go (lease taken) | {1} stale (drop) | {2, pttl_ms} busy (another writer holds the lease)
local token = ARGV[1]
local lease_ms = tonumber(ARGV[2])
local tombstone_ttl = tonumber(ARGV[3])
local upsert_ttl = tonumber(ARGV[4])
local out = {}
for i = 1, #KEYS / 2 do
  local sk, lk = KEYS[2 * i - 1], KEYS[2 * i]
  local ver = tonumber(ARGV[3 + 2 * i])
  local op = ARGV[4 + 2 * i]
  local st = redis.call('HMGET', sk, 'v', 'op', 'done')
  local v, sop, done = tonumber(st[1]), st[2], tonumber(st[3]) or -1
  local verdict = nil
  if v then
    if ver < v then
      verdict = {1}                                   -- older than what is known
    elseif ver == v then
      if sop == 'd' and op == 'u' then
        verdict = {1}                                 -- upsert after a delete of the same version
      elseif sop == op and done >= ver then
        verdict = {1}                                 -- replay of an applied event
      end
      -- same op not yet confirmed (a failed or running attempt), or a delete beating an upsert: go on
    end
  end
  if not verdict then
    local lease = redis.call('GET', lk)
    if lease and string.sub(lease, 1, #token + 1) ~= token .. '|' then
      verdict = {2, math.max(redis.call('PTTL', lk), 1)}
    else
      redis.call('HSET', sk, 'v', ver, 'op', op)
      redis.call('SET', lk, token .. '|' .. ver, 'PX', lease_ms)
      if op == 'd' then
        redis.call('EXPIRE', sk, tombstone_ttl)
      elseif upsert_ttl > 0 then
        redis.call('EXPIRE', sk, upsert_ttl)
      else
        redis.call('PERSIST', sk)
      end
      verdict = {0}
    end
  end
  out[i] = verdict
end
return out
