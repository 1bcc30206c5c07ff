"""The limits of ``changjak.serve.limits`` kept in Redis, shared by every gateway replica.

    limiter = Limiter(settings.limits, RedisStore(redis.asyncio.Redis.from_url(settings.redis_url)))

Each admission is one Lua script: it reads every limit of the key, decides, and takes the request,
its tokens and its concurrency slot in one atomic step on Redis's own clock (``TIME``), so replicas
whose clocks differ still agree and a burst spread over them never gets more than the limit.
Settling is a second script: refund unused tokens, correct the budget, release the slot.
"""

from __future__ import annotations

from typing import Any

from changjak.serve.limits import Ask

_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function available(key, limit)
  local b = redis.call('HMGET', key, 't', 'ts')
  if not b[1] then return limit end
  return math.min(limit, tonumber(b[1]) + (now - tonumber(b[2])) * limit / 60000)
end
local function put(key, tokens)
  redis.call('HSET', key, 't', string.format('%.6f', tokens), 'ts', now)
  redis.call('PEXPIRE', key, 180000)
end
"""

# KEYS: rpm bucket, tpm bucket, concurrency leases (zset), budget counter
# ARGV: rpm, tpm, concurrency, budget (0 = unlimited), tokens, tpm cost, lease id, lease ms,
#       budget left ms, budget ttl s
ADMIT = _COMMON + """
local rpm, tpm, conc, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens, cost = tonumber(ARGV[5]), tonumber(ARGV[6])
local worst, wait = 0, -1
local function fail(which, ms)
  if ms > wait then worst, wait = which, ms end
end
local rpm_left, tpm_left
if rpm > 0 then
  rpm_left = available(KEYS[1], rpm)
  if rpm_left < 1 then fail(1, (1 - rpm_left) * 60000 / rpm) end
end
if tpm > 0 then
  tpm_left = available(KEYS[2], tpm)
  if tpm_left < cost then fail(2, (cost - tpm_left) * 60000 / tpm) end
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= conc then fail(3, 1000) end
end
if budget > 0 then
  local used = tonumber(redis.call('GET', KEYS[4]) or '0')
  if used + tokens > budget then fail(4, tonumber(ARGV[9])) end
end
if worst > 0 then return {worst, math.ceil(wait)} end
if rpm > 0 then put(KEYS[1], rpm_left - 1) end
if tpm > 0 then put(KEYS[2], tpm_left - cost) end
if conc > 0 then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[8]), ARGV[7])
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[8]))
end
if budget > 0 then
  redis.call('INCRBY', KEYS[4], tokens)
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[10]))
end
return {0, 0}
"""

# KEYS: as ADMIT. ARGV: tpm, tpm cost, budget, tokens reserved, tokens used, lease id
SETTLE = _COMMON + """
local tpm, cost, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local reserved, used = tonumber(ARGV[4]), tonumber(ARGV[5])
if tpm > 0 and used ~= cost then put(KEYS[2], math.min(tpm, available(KEYS[2], tpm) + cost - used)) end
if budget > 0 and used ~= reserved and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('INCRBY', KEYS[4], used - reserved)
end
redis.call('ZREM', KEYS[3], ARGV[6])
return 1
"""


class RedisStore:
    def __init__(self, client: Any) -> None:
        self.client = client
        self._admit = client.register_script(ADMIT)
        self._settle = client.register_script(SETTLE)

    async def admit(self, ask: Ask) -> tuple[int, int]:
        which, retry_ms = await self._admit(keys=list(ask.keys), args=[
            ask.rpm, ask.tpm, ask.concurrency, ask.budget, ask.tokens, ask.tpm_cost, ask.lease_id,
            ask.lease_ms, ask.budget_left_ms, ask.budget_ttl_s])
        return int(which), int(retry_ms)

    async def settle(self, ask: Ask, tokens: int) -> None:
        await self._settle(keys=list(ask.keys), args=[ask.tpm, ask.tpm_cost, ask.budget, ask.tokens, tokens,
                                                      ask.lease_id])
