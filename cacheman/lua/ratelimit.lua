-- Token bucket for one tenant (cacheman/ratelimit.py). One key, so it is one Redis Cluster slot.
--
-- KEYS[1]  the bucket: a hash {tokens = float, ts = ms of the last refill}
-- ARGV[1]  refill rate, tokens per second
-- ARGV[2]  burst: bucket capacity
-- ARGV[3]  tokens wanted (a process takes a small batch and spends it locally)
-- Returns {granted, retry_after_ms}: granted in 1..wanted, or 0 with the wait until one token is back.
--
-- The clock is the server's (TIME), so API processes with skewed clocks share one bucket correctly;
-- scripts replicate by effects (Redis >= 5), so reading TIME is safe.

local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  ts = now
end

local granted = 0
local retry_ms = 0
if tokens >= 1 then
  granted = math.min(want, math.floor(tokens))
  tokens = tokens - granted
else
  retry_ms = math.ceil((1 - tokens) * 1000 / rate)
end

redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
-- A full bucket carries no information: let the key expire once it would have refilled.
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {granted, retry_ms}
