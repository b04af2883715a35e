"""Sending the delivery records the escalation engine writes (app/services/deliveries.py): one record
per (incident, step, recipient, channel), sent through its channel under the channel's breaker.

- Beat's `notifications.dispatch` claims due `pending` records (`FOR UPDATE SKIP LOCKED`) by
  moving `next_attempt_at` one lease ahead, and enqueues `notifications.deliver(id, lease)`.
- `deliver` takes the record only if it still holds that lease (or the lease ran out), checks the
  record's escalation token against the incident's (acknowledged / paused / next step: `stale`,
  nothing sent), counts the attempt, sends after commit, and records the outcome: `sent` (with the
  response code and reference in `reason.delivery`), or back to `pending` at a backed-off time, or
  `failed` plus a dead letter once the attempts run out or the error will not change.
- A worker killed mid-send leaves the record `pending` with its lease; when the lease runs out the
  next dispatch sends the step again, with the same idempotency key (the receiver's dedup key).
docs/notifications.md, "Delivery".
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select, update

from app import metrics
from app.adapters.channels import Sent, pagerduty, slack, webhook
from app.adapters.channels import email as email_channel
from app.adapters.db import unit_of_work
from app.adapters.escalation_models import NotificationDelivery, User
from app.adapters.http_client import DeliveryError
from app.adapters.models import Incident
from app.config.outbound import OutboundSettings, get_outbound_settings
from app.services.deadletters import record_dead_letter
from app.services.incidents import incident_to_dict

log = logging.getLogger(__name__)

TASK_NAME = "notifications.deliver"


def lease_secs() -> float:
    """How long a claimed record is left to its sender before it is sent again."""
    return float(os.environ.get("NOTIFICATION_LEASE_SECS", "120"))


def max_attempts() -> int:
    return int(os.environ.get("NOTIFICATION_MAX_ATTEMPTS", "5"))


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat()


def dispatch_due(limit: int = 500, now: datetime | None = None) -> list[tuple[int, str]]:
    """Claim up to `limit` due pending records; returns (id, lease) pairs to enqueue."""
    now = now or datetime.now(timezone.utc)
    lease = now + timedelta(seconds=lease_secs())
    table: Any = NotificationDelivery
    with unit_of_work() as session:
        due = (select(table.id).where(table.status == "pending", table.next_attempt_at <= now)
               .order_by(table.next_attempt_at, table.id).limit(limit).with_for_update(skip_locked=True))
        ids = list(session.scalars(due))
        if ids:
            session.execute(update(table).where(table.id.in_(ids)).values(next_attempt_at=lease, updated_at=now))
    return [(i, _iso(lease)) for i in ids]


@dataclass(frozen=True)
class _Claim:
    channel: str
    incident: dict[str, Any]
    contact: dict[str, Any]
    key: str
    attempts: int
    lease: datetime


def _claim(delivery_id: int, lease: str | None, replay: bool, now: datetime) -> _Claim | str:
    """Take the record for one attempt, or say why not (a string)."""
    with unit_of_work() as session:
        row = session.get(NotificationDelivery, delivery_id, with_for_update=True)
        if row is None:
            return "missing"
        if replay and row.status == "failed":  # `deadletters replay`: the operator asks for one more try
            row.status, row.attempts, row.next_attempt_at = "pending", 0, now
        if row.status != "pending":
            return row.status
        held = row.next_attempt_at
        if held is not None and held > now and (lease is None or _iso(held) != lease):
            return "held"  # another attempt holds a live lease (a duplicate or stale task message)
        incident = session.get(Incident, row.incident_id)
        if incident is None or incident.escalation_token != row.escalation_token:
            row.status, row.updated_at = "stale", now
            row.last_error = "not sent: the incident was acknowledged, paused, resolved or moved to another step"
            metrics.NOTIFICATIONS_SENT.labels(channel=row.channel, outcome="stale").inc()
            return "stale"
        row.attempts += 1
        row.next_attempt_at = now + timedelta(seconds=lease_secs())
        row.updated_at = now
        user = session.get(User, row.recipient)
        contact = dict(user.contact or {}) if user is not None else {}
        if user is not None and user.email:
            contact.setdefault("email", user.email)
        return _Claim(row.channel, incident_to_dict(incident), contact, row.idempotency_key, row.attempts,
                      row.next_attempt_at)


def _send(claim: _Claim, outbound: OutboundSettings) -> Sent:
    channel, incident, contact = claim.channel, claim.incident, claim.contact
    if channel == "email":
        recipients = [contact["email"]] if contact.get("email") else []
        return email_channel.send(incident, outbound, recipients, "escalated", claim.key)
    if channel == "slack":
        if not outbound.slack.enabled:
            raise DeliveryError("slack", "slack is not configured (notifications.slack)", False, kind="not_configured")
        return slack.post(incident, outbound, "escalated")
    if channel == "pagerduty":
        if not outbound.pagerduty.enabled:
            raise DeliveryError("pagerduty", "pagerduty is not configured (notifications.pagerduty)", False,
                                kind="not_configured")
        return pagerduty.send(incident, outbound, "trigger")
    if channel == "webhook":
        hook = outbound.webhook(str(contact.get("webhook") or ""))
        if hook is None:
            raise DeliveryError("webhook", f"the recipient names no configured webhook "
                                f"(contact.webhook = {contact.get('webhook')!r})", False, kind="not_configured")
        return webhook.send(hook, outbound, "escalated", incident, claim.key)
    raise DeliveryError(channel, f"no {channel} channel is available (email, slack, pagerduty, webhook are)", False,
                        kind="not_configured")


def _retry_at(exc: DeliveryError, attempts: int, now: datetime) -> datetime:
    # full jitter over 5 s * 2^(n-1), capped at 10 min; an open breaker's or a receiver's wait is a floor
    delay = random.uniform(0, min(600.0, 5.0 * 2 ** (attempts - 1)))
    return now + timedelta(seconds=max(delay, exc.retry_after_secs or 0.0))


def deliver(delivery_id: int, lease: str | None = None, replay: bool = False) -> dict[str, Any]:
    """Send one delivery record (see the module docstring); returns what happened."""
    now = datetime.now(timezone.utc)
    claim = _claim(delivery_id, lease, replay, now)
    if isinstance(claim, str):
        return {"id": delivery_id, "status": claim}
    outbound = get_outbound_settings()
    try:
        sent = _send(claim, outbound)
    except DeliveryError as exc:
        return _failed(delivery_id, claim, exc)
    with unit_of_work() as session:
        row = session.get(NotificationDelivery, delivery_id, with_for_update=True)
        if row is not None and row.status == "pending":
            row.status, row.last_error, row.updated_at = "sent", None, datetime.now(timezone.utc)
            row.reason = {**(row.reason or {}), "delivery": {
                "response_code": sent.status_code, "reference": dict(sent.reference), "target": sent.target,
                "attempts": row.attempts, "sent_at": _iso(row.updated_at)}}
    log.info("notification sent", extra={"delivery_id": delivery_id, "channel": claim.channel,
                                         "incident_id": claim.incident["id"], "attempt": claim.attempts})
    return {"id": delivery_id, "status": "sent", "response_code": sent.status_code}


def _failed(delivery_id: int, claim: _Claim, exc: DeliveryError) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    # an open breaker or a reached rate limit tried nothing: wait for it without spending an attempt
    untried = exc.kind in ("circuit_open", "rate_limited")
    final = not untried and (not exc.retryable or claim.attempts >= max_attempts())
    with unit_of_work() as session:
        row = session.get(NotificationDelivery, delivery_id, with_for_update=True)
        if row is None or row.status != "pending":
            return {"id": delivery_id, "status": row.status if row else "missing"}
        if untried:
            row.attempts = max(0, row.attempts - 1)
        row.last_error = str(exc)[:2000]
        row.updated_at = now
        row.reason = {**(row.reason or {}), "delivery": {"response_code": exc.status, "error_kind": exc.kind,
                                                         "attempts": row.attempts, "failed_at": _iso(now)}}
        if final:
            row.status = "failed"
        else:
            row.next_attempt_at = _retry_at(exc, claim.attempts, now)
    if final:
        record_dead_letter(TASK_NAME, "notifications", [delivery_id], {"replay": True}, exc, None, claim.attempts)
        metrics.DEAD_LETTERS.labels(task=TASK_NAME).inc()
        log.error("notification failed for good; dead-lettered", extra={
            "delivery_id": delivery_id, "channel": claim.channel, "error": str(exc)[:300]})
        return {"id": delivery_id, "status": "failed", "error": str(exc)}
    log.warning("notification attempt failed; will retry", extra={
        "delivery_id": delivery_id, "channel": claim.channel, "attempt": claim.attempts, "error": str(exc)[:300]})
    return {"id": delivery_id, "status": "retrying", "error": str(exc)}


def incident_notifications(incident_id: str) -> dict[str, Any]:
    """`GET /api/v1/incidents/{id}/notifications`: the incident's delivery records, oldest first
    (IncidentNotFound for an unknown id; a merged id answers for the incident it joined)."""
    from app.adapters.db import read_session
    from app.services.deliveries import deliveries_of
    from app.services.incidents import get_incident

    incident = get_incident(incident_id)
    with read_session() as session:
        return {"incident_id": incident["id"], "items": deliveries_of(session, incident["id"]), "next_cursor": None}
