"""Ingest-queue tasks: the outbox relay that re-sends committed work nobody finished."""

from __future__ import annotations

import logging

from app import metrics
from app.config import get_settings
from app.services import outbox
from tasks.celery_app import app
from tasks.dispatch import dispatch_pipeline

log = logging.getLogger(__name__)


@app.task(name="ingest.relay_outbox")
def relay_outbox() -> int:
    ids = outbox.claim_stale(get_settings().outbox_relay_after_secs)
    if ids:
        dispatch_pipeline(ids)
        metrics.OUTBOX_RELAYED.inc(len(ids))
        log.warning("outbox relay re-sent work", extra={"outbox_ids": ids[:50], "count": len(ids)})
    return len(ids)


@app.task(name="ingest.beat_heartbeat")
def beat_heartbeat() -> None:
    """Scheduled by beat every few seconds; /health reports its age as beat lag."""
    from app.services.health import record_beat_heartbeat

    record_beat_heartbeat()
