-- The watermark decision with hysteresis, shared by enqueue.lua and enqueue_many.lua (taskkit/scripts.py
-- puts this file in front of them). Mirror of taskkit.backpressure.admit_many: n new jobs are admitted
-- only if the queue is open and depth + n <= high; closed starts at depth >= high (or the oldest ready job
-- too old) and ends only at depth <= low. A request that is merely too big is refused without closing.
-- Returns ok, retry_after_ms, depth, oldest_age_ms.
local function admit(bp_key, queue_key, n, now, high, low, max_age, min_ra, max_ra)
  local depth = redis.call('ZCOUNT', queue_key, '-inf', now)
  local age = 0
  local oldest = redis.call('ZRANGEBYSCORE', queue_key, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1)
  if oldest[2] then age = now - tonumber(oldest[2]) end
  local aged = max_age > 0 and age >= max_age
  local closed = redis.call('HGET', bp_key, 'closed') == '1'
  if closed then
    if depth <= low and not aged then
      closed = false
      redis.call('HSET', bp_key, 'closed', '0')
    end
  elseif depth >= high or aged then
    closed = true
    redis.call('HSET', bp_key, 'closed', '1')
  end
  if not closed and depth + n <= high then
    return true, 0, depth, age
  end
  local rate = tonumber(redis.call('HGET', bp_key, 'rate') or '0') or 0
  local ra = min_ra
  if rate > 0 then
    ra = math.max(ra, math.floor((depth - low) * 1000 / rate))
  end
  return false, math.min(ra, max_ra), depth, age
end
