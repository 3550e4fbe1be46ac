-- Which messages the version guard knows (indexed, claimed or tombstoned): for backfill's skip.
-- KEYS: state hashes. Returns per key: 1 known | 0 unknown
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('EXISTS', KEYS[i])
end
return out
