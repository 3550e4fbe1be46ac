-- Confirm (or release) claims after the Milvus write (index_worker/guard.py).
-- KEYS: per message, state hash and lease key: s1, l1, ...
-- ARGV: token, ok ('1' the write succeeded | '0' it surely did not happen), then per message: version
-- Returns per message: 0 confirmed under our lease | 1 confirmed late (lease expired, still the newest)
--                      2 lost (lease expired and a newer version was claimed: our write may have landed last)
--                      3 released (ok = '0')
local token, ok = ARGV[1], ARGV[2] == '1'
local out = {}
for i = 1, #KEYS / 2 do
  local sk, lk = KEYS[2 * i - 1], KEYS[2 * i]
  local ver = tonumber(ARGV[2 + i])
  local mine = redis.call('GET', lk) == token .. '|' .. ver
  if mine then
    redis.call('DEL', lk)
  end
  if not ok then
    out[i] = 3
  else
    local v = tonumber(redis.call('HGET', sk, 'v'))
    if v == ver then
      local done = tonumber(redis.call('HGET', sk, 'done')) or -1
      if ver > done then
        redis.call('HSET', sk, 'done', ver)
      end
      out[i] = mine and 0 or 1
    else
      out[i] = mine and 0 or 2
    end
  end
end
return out
