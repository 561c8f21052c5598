-- Per-key requests-per-minute and tokens-per-minute limits, as two GCRA buckets.
--
-- Each bucket stores its theoretical arrival time (TAT) in microseconds of Redis's clock, so
-- every gateway replica shares one clock and one state. A bucket of limit L per 60 s admits a
-- burst of L, then one unit every 60/L s.
--
-- KEYS[1] request bucket, KEYS[2] token bucket
-- ARGV[1] rpm (0 = unlimited), ARGV[2] tpm (0 = unlimited), ARGV[3] mode: "admit" or "charge",
-- ARGV[4] tokens to charge (charge mode)
--
-- admit:  takes one request if the request bucket has room and the token bucket is not empty
--         (tokens are only known after completion, so admission only checks for a positive balance).
-- charge: adds the tokens a finished request used; never refuses, the next admit pays the debt.
--
-- Returns {allowed (1/0), refused_by (0 none, 1 rpm, 2 tpm), retry_after_us, remaining_requests, remaining_tokens}

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = 60000000
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])

local function tat(key)
  local v = redis.call('GET', key)
  if v then
    local n = tonumber(v)
    if n > now then return n end
  end
  return now
end

local function store(key, value)
  redis.call('SET', key, string.format('%.0f', value), 'PX', math.ceil((value - now) / 1000) + 1000)
end

local function remaining(bucket_tat, limit)
  if limit <= 0 then return -1 end
  return math.max(0, math.floor((period - (bucket_tat - now)) / (period / limit)))
end

if ARGV[3] == 'charge' then
  local tokens = tonumber(ARGV[4])
  if tpm > 0 and tokens > 0 then
    store(KEYS[2], tat(KEYS[2]) + tokens * (period / tpm))
  end
  return {1, 0, 0, -1, -1}
end

local req_tat = now
local req_new = now
if rpm > 0 then
  req_tat = tat(KEYS[1])
  req_new = req_tat + period / rpm
  if req_new - now > period then
    return {0, 1, math.ceil(req_new - now - period), 0, -1}
  end
end
local tok_tat = now
if tpm > 0 then
  tok_tat = tat(KEYS[2])
  local next_token = tok_tat + period / tpm
  if next_token - now > period then
    return {0, 2, math.ceil(next_token - now - period), remaining(req_tat, rpm), 0}
  end
end
if rpm > 0 then
  store(KEYS[1], req_new)
end
return {1, 0, 0, remaining(req_new, rpm), remaining(tok_tat, tpm)}
