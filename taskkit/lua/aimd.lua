-- AIMD rate controller shared by every worker process: a token bucket whose rate (the limit, calls/s)
-- grows additively while the downstream is happy and shrinks multiplicatively when it says "slow down".
-- KEYS: 1 state hash (limit, tokens, ts, last_inc, last_dec)
-- ARGV: 1 op (acquire|ok|slow|get), 2 now ms, 3 min, 4 max, 5 initial, 6 add per second,
--       7 beta (0..1), 8 cooldown ms, 9 cost
-- Returns {granted 1/0, wait ms, limit as string}
local now = tonumber(ARGV[2])
local lo, hi = tonumber(ARGV[3]), tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[1], 'limit', 'tokens', 'ts', 'last_inc', 'last_dec')
local limit = tonumber(s[1]) or tonumber(ARGV[5])
local tokens = tonumber(s[2]) or limit
local ts = tonumber(s[3]) or now
local last_inc = tonumber(s[4]) or now
local last_dec = tonumber(s[5]) or 0
local burst = math.max(1, limit)
tokens = math.min(burst, tokens + math.max(0, now - ts) * limit / 1000)
local op = ARGV[1]
local granted, wait = 1, 0
if op == 'acquire' then
  local cost = tonumber(ARGV[9])
  if tokens >= cost then
    tokens = tokens - cost
  else
    granted = 0
    wait = math.ceil((cost - tokens) * 1000 / limit)
  end
elseif op == 'ok' then
  local dt = now - last_inc
  if dt >= 1000 then
    limit = math.min(hi, limit + tonumber(ARGV[6]) * math.min(dt, 10000) / 1000)
    last_inc = now
  end
elseif op == 'slow' then
  if now - last_dec >= tonumber(ARGV[8]) then
    limit = math.max(lo, limit * tonumber(ARGV[7]))
    tokens = math.min(tokens, limit)
    last_dec = now
    last_inc = now
  end
end
redis.call('HSET', KEYS[1], 'limit', tostring(limit), 'tokens', tostring(tokens), 'ts', now,
  'last_inc', last_inc, 'last_dec', last_dec)
redis.call('PEXPIRE', KEYS[1], 86400000)
return {granted, wait, tostring(limit)}
