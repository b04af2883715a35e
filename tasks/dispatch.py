"""Hand committed work to the pipeline, after commit.

With Redis: outbox ids go onto a list and one `pipeline.drain` task takes what arrived within
PIPELINE_FLUSH_MS (up to PIPELINE_BATCH_SIZE events), so small requests still make big tasks.
Without Redis (embedded default): one `pipeline.process` task per outbox row.
"""

from __future__ import annotations

from typing import Sequence

from app.adapters.redis_client import get_redis
from app.config import get_settings

PENDING_KEY = "im:pipeline:pending"
DRAIN_FLAG_KEY = "im:pipeline:drain-scheduled"


def dispatch_pipeline(outbox_ids: Sequence[int], announcements: Sequence[tuple[str, str]] = ()) -> None:
    """Hand outbox ids to the pipeline. `announcements` are (channel, message) pairs to publish in
    the same Redis round trip (ingest announces the incidents it opened this way)."""
    from tasks.celery_app import app

    if not outbox_ids:
        return
    client = get_redis()
    settings = get_settings()
    if client is None:
        for outbox_id in outbox_ids:
            app.send_task("pipeline.process", args=[[outbox_id]])
        return
    pipe = client.pipeline(transaction=False)
    pipe.rpush(PENDING_KEY, *outbox_ids)
    pipe.set(DRAIN_FLAG_KEY, "1", nx=True, px=max(200, settings.pipeline_flush_ms * 4))
    for channel, message in announcements:
        pipe.publish(channel, message)
    _, scheduled, *_ = pipe.execute()
    if scheduled:
        app.send_task("pipeline.drain", countdown=settings.pipeline_flush_ms / 1000.0)


dispatch_pipeline.carries_announcements = True  # type: ignore[attr-defined]
