"""Health of the dependencies: database, broker, workers, beat."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import text

from app.adapters.db import get_engine
from app.adapters.redis_client import get_redis
from app.config import get_settings

QUEUES = ("ingest", "pipeline", "notifications", "escalation", "playbooks", "ml")
BEAT_HEARTBEAT_KEY = "im:beat:heartbeat"
_workers_cache: tuple[float, dict[str, Any]] | None = None


def check_database() -> dict[str, Any]:
    started = time.perf_counter()
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "up", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    except Exception as exc:
        return {"status": "down", "error": type(exc).__name__}


def check_broker() -> dict[str, Any]:
    settings = get_settings()
    if settings.broker_url.startswith("filesystem://"):
        folder = settings.data_dir / "broker"
        return {"status": "up" if folder.exists() else "down", "transport": "filesystem"}
    from tasks.celery_app import app

    started = time.perf_counter()
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return {"status": "up", "transport": settings.broker_url.split(":")[0],
                "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    except Exception as exc:
        return {"status": "down", "error": type(exc).__name__}


def check_workers(timeout: float = 1.0) -> dict[str, Any]:
    """Ping the workers (cached 10 s: a ping costs up to `timeout`)."""
    global _workers_cache
    now = time.monotonic()
    if _workers_cache and _workers_cache[0] > now:
        return _workers_cache[1]
    from tasks.celery_app import app

    try:
        replies = app.control.ping(timeout=timeout) or []
        names = sorted(name for reply in replies for name in reply)
        result: dict[str, Any] = {"status": "up" if names else "down", "count": len(names), "workers": names}
    except Exception as exc:
        result = {"status": "down", "error": type(exc).__name__}
    _workers_cache = (now + 10.0, result)
    return result


def _heartbeat_file():  # type: ignore[no-untyped-def]
    return get_settings().data_dir / "beat-heartbeat"


def check_beat() -> dict[str, Any]:
    """Age of beat's last heartbeat task (Redis when configured, else a file in DATA_DIR)."""
    client = get_redis()
    try:
        if client is not None:
            raw = client.get(BEAT_HEARTBEAT_KEY)
            last = float(raw) if raw is not None else None
        else:
            path = _heartbeat_file()
            last = float(path.read_text()) if path.exists() else None
    except Exception as exc:
        return {"status": "down", "error": type(exc).__name__}
    if last is None:
        return {"status": "down", "reason": "no beat heartbeat yet"}
    lag = max(0.0, time.time() - last)
    return {"status": "up" if lag < 60 else "down", "lag_seconds": round(lag, 1)}


def record_beat_heartbeat() -> None:
    client = get_redis()
    if client is not None:
        client.set(BEAT_HEARTBEAT_KEY, str(time.time()), ex=3600)
    else:
        path = _heartbeat_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(time.time()))
        tmp.replace(path)


def queue_depths() -> dict[str, int]:
    client = get_redis()
    settings = get_settings()
    if client is None or not settings.broker_url.startswith(("redis://", "rediss://")):
        return {}
    depths: dict[str, int] = {}
    pipe = client.pipeline(transaction=False)
    for queue in QUEUES:
        pipe.llen(queue)
        for priority in (3, 6, 9):
            pipe.llen(f"{queue}\x06\x16{priority}")
    values = pipe.execute()
    for i, queue in enumerate(QUEUES):
        depths[queue] = int(sum(values[i * 4:(i + 1) * 4]))
    return depths


def full_health() -> tuple[bool, dict[str, Any]]:
    checks = {
        "database": check_database(),
        "broker": check_broker(),
        "workers": check_workers(),
        "beat": check_beat(),
    }
    ready = checks["database"]["status"] == "up" and checks["broker"]["status"] == "up"
    status = "healthy" if all(c["status"] in ("up", "unknown") for c in checks.values()) else (
        "degraded" if ready else "unhealthy")
    return ready, {"status": status, "checks": checks, "queues": queue_depths()}
