"""The process's Redis client (None in the embedded default, which runs without a Redis server)."""

from __future__ import annotations

import os
import threading

import redis

from app.config import get_settings

_lock = threading.Lock()
_client: redis.Redis | None = None
_pid: int | None = None


def get_redis() -> redis.Redis | None:
    global _client, _pid
    url = get_settings().redis_url
    if not url:
        return None
    if _client is None or _pid != os.getpid():
        with _lock:
            if _client is None or _pid != os.getpid():
                _client = redis.Redis.from_url(
                    url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
                )
                _pid = os.getpid()
    return _client


def reset_redis() -> None:
    global _client, _pid
    with _lock:
        _client = None
        _pid = None
