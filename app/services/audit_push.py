"""The governance audit push: committed timeline rows of the configured kinds (incident_created,
incident_resolved, incident_closed, sla_breached, escalated) sent to governance in batches of
`max_batch_size`, or sooner when the oldest waiting one is `max_wait_ms` old.

The timeline is the source (durable, in Postgres); a cursor (the last pushed row id) lives in Redis
and moves only after the receiver accepted a batch, so a crash or an outage re-sends, never loses
(at least once; `event_id` is stable for the receiver to drop repeats). If the cursor is lost the
push starts over from the oldest row. Rows younger than SETTLE_SECS wait: a transaction that began
earlier may still commit a lower id. docs/notifications.md, "Governance audit push".
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, or_, select

from app.adapters.channels import governance
from app.adapters.db import read_session
from app.adapters.models import TimelineEntry
from app.adapters.redis_client import get_redis
from app.config.outbound import get_outbound_settings

log = logging.getLogger(__name__)

CURSOR_KEY = "im:governance:audit-cursor"
LOCK_KEY = "im:governance:audit-lock"
SETTLE_SECS = 2.0

# timeline row -> audit event type
_KINDS = {"created": "incident_created", "sla_breached": "sla_breached", "escalated": "escalated"}
_STATUS = {"RESOLVED": "incident_resolved", "CLOSED": "incident_closed"}


def event_type(kind: str, field: str | None, new_value: str | None) -> str | None:
    if kind == "status_changed" and field == "status":
        return _STATUS.get(str(new_value))
    return _KINDS.get(kind)


def _pending(after_id: int, wanted: tuple[str, ...], limit: int, settled_before: datetime) -> list[dict[str, Any]]:
    kinds = [k for k, v in _KINDS.items() if v in wanted]
    statuses = [k for k, v in _STATUS.items() if v in wanted]
    condition = or_(TimelineEntry.kind.in_(kinds),
                    and_(TimelineEntry.kind == "status_changed", TimelineEntry.field == "status",
                         TimelineEntry.new_value.in_(statuses)))
    with read_session() as session:
        rows = session.execute(
            select(TimelineEntry.id, TimelineEntry.incident_id, TimelineEntry.at, TimelineEntry.actor,
                   TimelineEntry.kind, TimelineEntry.field, TimelineEntry.old_value, TimelineEntry.new_value)
            .where(TimelineEntry.id > after_id, TimelineEntry.at < settled_before, condition)
            .order_by(TimelineEntry.id).limit(limit)).all()
    return [dict(row._mapping) for row in rows]


def push_due(now: datetime | None = None) -> dict[str, Any]:
    """Push every full batch, then a partial one whose oldest event waited `max_wait_ms`.
    One pusher at a time (a Redis lock); returns what was sent."""
    outbound = get_outbound_settings()
    audit = outbound.governance
    client = get_redis()
    if not audit.enabled:
        return {"status": "disabled", "pushed": 0}
    if client is None:
        return {"status": "needs_redis", "pushed": 0}
    if not client.set(LOCK_KEY, "1", nx=True, px=300_000):
        return {"status": "busy", "pushed": 0}
    pushed = batches = 0
    try:
        now = now or datetime.now(timezone.utc)
        size = audit.max_batch_size if audit.batching else 1
        while True:
            cursor = int(client.get(CURSOR_KEY) or 0)
            rows = _pending(cursor, audit.push_events, size, now - timedelta(seconds=SETTLE_SECS))
            if not rows:
                break
            oldest_wait_ms = (now - rows[0]["at"]).total_seconds() * 1000
            if audit.batching and len(rows) < size and oldest_wait_ms < audit.max_wait_ms:
                break  # not full and not old enough: wait for more
            events = [governance.audit_event(str(event_type(r["kind"], r["field"], r["new_value"])), r) for r in rows]
            governance.push(events, outbound)
            client.set(CURSOR_KEY, rows[-1]["id"])
            pushed += len(events)
            batches += 1
    finally:
        client.delete(LOCK_KEY)
    if pushed:
        log.info("audit events pushed to governance", extra={"events": pushed, "batches": batches})
    return {"status": "ok", "pushed": pushed, "batches": batches}
