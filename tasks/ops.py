"""Operational tasks: queue gauges (Flower shows queues too; Prometheus alerts need numbers)."""

from __future__ import annotations

from typing import Any

from app import metrics
from app.services.health import record_queue_stats
from app.services.outbox import pending_stats
from tasks.celery_app import app
from tasks.queue import celery_task_queue


@app.task(name="ops.record_queue_depths")
def record_queue_depths() -> dict[str, Any]:
    stats = record_queue_stats(celery_task_queue())
    count, oldest = pending_stats()
    metrics.QUEUE_DEPTH.labels(queue="outbox").set(count)
    metrics.QUEUE_OLDEST_AGE.labels(queue="outbox").set(oldest)
    return dict(stats)
