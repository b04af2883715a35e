"""Pipeline-queue tasks. `pipeline.drain` turns the pending outbox ids into batches and runs
`pipeline.process` on each; the stages live in app.services.pipeline."""

from __future__ import annotations

import logging

from app.adapters.redis_client import get_redis
from app.config import get_settings
from app.services import outbox
from app.services.pipeline import process_events
from tasks.celery_app import app
from tasks.dispatch import DRAIN_FLAG_KEY, PENDING_KEY

log = logging.getLogger(__name__)


@app.task(name="pipeline.drain")
def drain() -> int:
    client = get_redis()
    if client is None:
        return 0
    settings = get_settings()
    taken = 0
    while True:
        raw = client.lpop(PENDING_KEY, 200) or []
        outbox_ids = sorted({int(x) for x in raw})
        if outbox_ids:
            app.send_task("pipeline.process", args=[outbox_ids])
            taken += len(outbox_ids)
        if len(raw) < 200:
            break
    # Clear the flag, then look again: a producer that pushed after our last pop either sees the
    # flag gone and schedules a drain itself, or its ids are seen here. No lost wake-ups.
    client.delete(DRAIN_FLAG_KEY)
    if client.llen(PENDING_KEY) and client.set(DRAIN_FLAG_KEY, "1", nx=True, px=max(200, settings.pipeline_flush_ms * 4)):
        app.send_task("pipeline.drain", countdown=settings.pipeline_flush_ms / 1000.0)
    return taken


@app.task(name="pipeline.process")
def process(outbox_ids: list[int]) -> int:
    event_ids = outbox.event_ids_for(outbox_ids)
    done = process_events(event_ids) if event_ids else 0
    outbox.mark_done(outbox_ids)
    return done
