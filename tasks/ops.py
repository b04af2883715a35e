"""Operational tasks: queue depth gauges (Flower shows queues too; Prometheus alerts need numbers)."""

from __future__ import annotations

from app import metrics
from app.services.health import queue_depths
from app.services.outbox import pending_stats
from tasks.celery_app import app


@app.task(name="ops.record_queue_depths")
def record_queue_depths() -> dict[str, int]:
    depths = queue_depths()
    for queue, depth in depths.items():
        metrics.QUEUE_DEPTH.labels(queue=queue).set(depth)
    count, oldest = pending_stats()
    metrics.QUEUE_DEPTH.labels(queue="outbox").set(count)
    metrics.QUEUE_OLDEST_AGE.labels(queue="outbox").set(oldest)
    return depths
