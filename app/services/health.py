"""Health of the dependencies: database, broker, workers, beat, the escalation backlog, the
analytics rollup, and the depth of every queue. Nothing in it is secret: /health answers without credentials (CONTRACT).

The broker and the workers are reached through a `TaskQueue` the caller passes in (the web passes
the Celery one), so this module knows no Celery."""

from __future__ import annotations

import math
import time
from typing import Any

from sqlalchemy import text

from app import metrics
from app.adapters.db import get_engine
from app.adapters.redis_client import get_redis
from app.config import get_settings
from app.services.task_queue import QueueStats, TaskQueue

BEAT_HEARTBEAT_KEY = "im:beat:heartbeat"
_workers_cache: tuple[float, dict[str, Any]] | None = None
_full_cache: tuple[float, tuple[bool, dict[str, Any]]] | None = None


def check_database() -> dict[str, Any]:
    started = time.perf_counter()
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "up", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    except Exception as exc:
        return {"status": "down", "error": type(exc).__name__}


def check_broker(queue: TaskQueue) -> dict[str, Any]:
    try:
        return queue.broker_status()
    except Exception as exc:  # a broker that cannot even be asked is down; the type says why
        return {"status": "down", "error": type(exc).__name__}


def check_workers(queue: TaskQueue, timeout: float = 1.0) -> dict[str, Any]:
    """Ping the workers (cached 10 s: a ping costs up to `timeout`)."""
    global _workers_cache
    now = time.monotonic()
    if _workers_cache and _workers_cache[0] > now:
        return _workers_cache[1]
    try:
        names = queue.ping_workers(timeout)
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


# An incident due for paging longer than this has been missed by the sweep (beat runs it every few
# seconds; docs/escalation.md): the escalation check says "down".
ESCALATION_OVERDUE_SECS = 60.0


def check_escalation() -> dict[str, Any]:
    """Incidents due for their next escalation level and how long the oldest has waited."""
    if not get_settings().enable_escalation:
        return {"status": "off"}
    from app.services.escalation import due_summary

    try:
        due, overdue = due_summary()
    except Exception as exc:  # the database check says why
        return {"status": "down", "error": type(exc).__name__}
    late = overdue is not None and overdue > ESCALATION_OVERDUE_SECS
    return {"status": "down" if late else "up", "due": due, "oldest_overdue_seconds": overdue}


def record_queue_stats(queue: TaskQueue) -> dict[str, QueueStats]:
    """Read every queue's depth and oldest waiting message, and set the Prometheus gauges
    (`incident_manager_queue_depth{queue}`, `incident_manager_queue_oldest_age_seconds{queue}`)."""
    stats = queue.queue_stats()
    for name, entry in stats.items():
        metrics.QUEUE_DEPTH.labels(queue=name).set(entry["depth"])
        age = entry["oldest_age_seconds"]
        # unknown while messages wait (RabbitMQ keeps no age we can read): NaN, not a reassuring 0
        metrics.QUEUE_OLDEST_AGE.labels(queue=name).set(age if age is not None else (
            0.0 if entry["depth"] == 0 else math.nan))
    return stats


def check_analytics() -> dict[str, Any]:
    """The analytics rollup: down when closed days wait more than two days to be rolled up."""
    from app.services.analytics import rollup_state

    try:
        return rollup_state()
    except Exception as exc:  # the database check says why
        return {"status": "down", "error": type(exc).__name__}


def full_health(queue: TaskQueue, max_age: float | None = None) -> tuple[bool, dict[str, Any]]:
    """(ready, body) for /health: each dependency's check, and every queue's depth and oldest age.
    Reused for `max_age` seconds (HEALTH_CACHE_SECS, 1 s) per process: /health is open, so a client
    polling it in a loop costs at most one round of checks a second per process."""
    global _full_cache
    max_age = get_settings().health_cache_secs if max_age is None else max_age
    now = time.monotonic()
    cached = _full_cache
    if max_age > 0 and cached is not None and cached[0] > now:
        ready, body = cached[1]
        return ready, {**body, "cached": True}
    ready, body = _full_health(queue)
    if max_age > 0:
        _full_cache = (now + max_age, (ready, body))
    return ready, dict(body)


def _full_health(queue: TaskQueue) -> tuple[bool, dict[str, Any]]:
    checks = {
        "database": check_database(),
        "broker": check_broker(queue),
        "workers": check_workers(queue),
        "beat": check_beat(),
        "escalation": check_escalation(),
        "analytics": check_analytics(),
    }
    ready = checks["database"]["status"] == "up" and checks["broker"]["status"] == "up"
    status = "healthy" if all(c["status"] in ("up", "unknown", "off") for c in checks.values()) else (
        "degraded" if ready else "unhealthy")
    body: dict[str, Any] = {"status": status, "checks": checks, "queues": {}}
    if checks["database"]["status"] == "up":
        try:  # delivery records due and unsent: a growing oldest age means the senders fall behind
            from app.services.notifications import backlog

            body["notifications"] = backlog()
        except Exception as exc:
            body["notifications_error"] = type(exc).__name__
    if checks["broker"]["status"] == "up":
        try:
            body["queues"] = record_queue_stats(queue)
        except Exception as exc:  # the broker went away between the two calls: say so, stay up
            body["queues_error"] = type(exc).__name__
    return ready, body
