"""Per-key token bucket: `requests_per_minute` refill, `burst` capacity.

With Redis the bucket is shared by every web process (one Lua script, atomic). In the embedded
default (no Redis) each process keeps its own bucket, so the effective limit is per process.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from app.adapters.redis_client import get_redis

_LUA = """
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', key, 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then tokens = capacity; ts = now end
tokens = math.min(capacity, tokens + (now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', key, 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', key, math.ceil(capacity / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_secs: int


class RateLimiter:
    def __init__(self) -> None:
        self._scripts: dict[int, Any] = {}  # per Redis client: a Script is bound to its client
        self._local: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key_id: str, requests_per_minute: int, burst: int) -> Decision:
        if requests_per_minute <= 0:  # `--rate-limit 0`: no limit
            return Decision(True, 0)
        rate = requests_per_minute / 60.0
        capacity = max(1, burst)
        client = get_redis()
        if client is not None:
            script = self._scripts.get(id(client))
            if script is None:
                script = self._scripts[id(client)] = client.register_script(_LUA)
            allowed, wait = script(keys=[f"im:ratelimit:{key_id}"], args=[rate, capacity, time.time()])
            return Decision(bool(int(allowed)), max(1, math.ceil(float(wait))) if not int(allowed) else 0)
        now = time.monotonic()
        with self._lock:
            tokens, ts = self._local.get(key_id, (float(capacity), now))
            tokens = min(capacity, tokens + (now - ts) * rate)
            if tokens >= 1:
                self._local[key_id] = (tokens - 1, now)
                return Decision(True, 0)
            self._local[key_id] = (tokens, now)
            return Decision(False, max(1, math.ceil((1 - tokens) / rate)))


limiter = RateLimiter()
