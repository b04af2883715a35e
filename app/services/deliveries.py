"""Escalation pages as delivery records, the notification service's intake: one per (escalation
step, recipient, channel).

A page is this record, written `pending` with the escalation's timeline entry; the sender
(app/services/notifications.py) claims due rows (`ix_notification_deliveries_due`), checks that the
record's `escalation_token` still equals the incident's (an acknowledged or paused incident has
another or none, so a stale page is never sent), and fills `status`, `attempts`, `last_error`,
`response_code`, `next_attempt_at`.
The unique index on (incident, step, recipient, channel) makes one step page each recipient on
each channel at most once, whatever replays or races happen; `idempotency_key` is those four joined
(what a channel hands its provider as a dedup key). See docs/escalation.md."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.adapters.bulk import insert_rows
from app.adapters.escalation_models import NotificationDelivery

DELIVERY_STATUSES = ("pending", "sending", "sent", "failed", "stale")


@dataclass(frozen=True)
class Page:
    """One recipient of one escalation step, and why they are paged."""

    recipient: str
    target_type: str
    target_id: str
    via: str


def idempotency_key(incident_id: str, step: str, recipient: str, channel: str) -> str:
    return f"{incident_id}:{step}:{recipient}:{channel}"[:200]


def delivery_rows(incident_id: str, token: str, step: str, level: int, pages: Sequence[Page],
                  channels: Sequence[str], reason: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    return [{
        "incident_id": incident_id, "escalation_token": token, "step": step, "level": level, "channel": channel,
        "target_type": page.target_type, "target_id": page.target_id, "recipient": page.recipient,
        "status": "pending", "attempts": 0, "last_error": None,
        "idempotency_key": idempotency_key(incident_id, step, page.recipient, channel),
        "reason": {**reason, "via": page.via}, "created_at": now, "updated_at": now, "next_attempt_at": now,
    } for page in pages for channel in channels]


def insert_deliveries(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert delivery rows in one statement, skipping any whose step already paged that recipient on
    that channel. Returns the
    rows written."""
    table: Any = NotificationDelivery.__table__
    return len(insert_rows(session, table, rows, conflict_key="incident_id, step, recipient, channel",
                           returning="id"))


def deliveries_of(session: Session, incident_id: str) -> list[dict[str, Any]]:
    """The incident's delivery records, oldest first."""
    table: Any = NotificationDelivery
    return [{
        "id": d.id, "step": d.step, "level": d.level, "channel": d.channel, "target_type": d.target_type,
        "target_id": d.target_id, "recipient": d.recipient, "status": d.status, "attempts": d.attempts,
        "last_error": d.last_error, "response_code": d.response_code, "idempotency_key": d.idempotency_key,
        "reason": d.reason,
        "created_at": d.created_at.isoformat().replace("+00:00", "Z"),
    } for d in session.scalars(select(table).where(table.incident_id == incident_id).order_by(table.id))]

