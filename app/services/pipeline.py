"""The pipeline's stages over a batch of event ids (set-based SQL, idempotent)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Sequence

from sqlalchemy import select, update

from app import metrics
from app.adapters.db import unit_of_work
from app.adapters.models import Event, Incident


def process_events(event_ids: Sequence[int]) -> int:
    """Finish a batch: mark its events and their incidents processed. Idempotent."""
    started = time.perf_counter()
    now = datetime.now(timezone.utc)
    with unit_of_work() as session:
        fresh = list(session.execute(
            select(Event.id, Event.incident_id).where(Event.id.in_(list(event_ids)), Event.processed_at.is_(None))
        ).all())
        if not fresh:
            return 0
        session.execute(update(Event).where(Event.id.in_([r.id for r in fresh])).values(processed_at=now))
        incident_ids = sorted({r.incident_id for r in fresh})
        session.execute(
            update(Incident).where(Incident.id.in_(incident_ids), Incident.processed_at.is_(None)).values(processed_at=now)
        )
    metrics.ALERTS_PROCESSED.inc(len(fresh))
    metrics.PROCESSING_DURATION.labels(stage="total").observe(time.perf_counter() - started)
    return len(fresh)
