"""Sending the delivery records the escalation engine writes (app/services/deliveries.py): one record
per (incident, step, recipient, channel), sent through its channel under the channel's breaker.

- Beat's `notifications.dispatch` claims due `pending` records (`FOR UPDATE SKIP LOCKED`) by
  moving `next_attempt_at` one queue lease ahead, and enqueues them, 50 to a
  `notifications.deliver_batch` task.
- `deliver_many` takes a record only if it still holds that lease (or the lease ran out), checks the
  record's escalation token against the incident's (acknowledged / paused / next step: `stale`,
  nothing sent), counts the attempt, renews the lease for the send, sends after commit (the batch's
  records concurrently), and records the outcome: `sent` (with the
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

from sqlalchemy import select, update

from app import metrics
from app.adapters.channels import Sent, pagerduty, slack, webhook
from app.adapters.channels import email as email_channel
from app.adapters.db import unit_of_work
from app.adapters.escalation_models import NotificationDelivery, User
from app.adapters.http_client import DeliveryError
from app.adapters.models import Incident
from app.config.outbound import OutboundSettings, get_outbound_settings
from app.domain.times import iso
from app.services.deadletters import record_dead_letter
from app.services.incidents import incident_to_dict

log = logging.getLogger(__name__)

TASK_NAME = "notifications.deliver"
SEND_THREADS = 16  # concurrent sends within one batch


def lease_secs() -> float:
    """How long a record a worker took is left to it before it is sent again."""
    return float(os.environ.get("NOTIFICATION_LEASE_SECS", "120"))


def queue_lease_secs() -> float:
    """How long a dispatched record may wait in the queue before dispatch takes it again (a task
    message a dead worker held comes back after the broker's visibility timeout, 600 s)."""
    return float(os.environ.get("NOTIFICATION_QUEUE_LEASE_SECS", "600"))


def max_attempts() -> int:
    return int(os.environ.get("NOTIFICATION_MAX_ATTEMPTS", "5"))


def dispatch_due(limit: int = 500, now: datetime | None = None) -> list[tuple[int, str]]:
    """Claim up to `limit` due pending records; returns (id, lease) pairs to enqueue."""
    now = now or datetime.now(timezone.utc)
    lease = now + timedelta(seconds=queue_lease_secs())
    table: Any = NotificationDelivery
    with unit_of_work() as session:
        due = (select(table.id).where(table.status == "pending", table.next_attempt_at <= now)
               .order_by(table.next_attempt_at, table.id).limit(limit).with_for_update(skip_locked=True))
        ids = list(session.scalars(due))
        if ids:
            session.execute(update(table).where(table.id.in_(ids)).values(next_attempt_at=lease, updated_at=now))
    return [(i, iso(lease)) for i in ids]


@dataclass(frozen=True)
class _Claim:
    id: int
    channel: str
    incident: dict[str, Any]
    contact: dict[str, Any]
    key: str
    attempts: int


def _claim_many(items: Sequence[tuple[int, str | None]], replay: bool, now: datetime) -> tuple[list[_Claim],
                                                                                               dict[int, str]]:
    """Take each record for one attempt (one transaction, rows locked in id order), or say why not."""
    leases = dict(items)
    table: Any = NotificationDelivery
    claims: list[_Claim] = []
    skipped: dict[int, str] = {}
    with unit_of_work() as session:
        rows = {r.id: r for r in session.scalars(select(table).where(table.id.in_(list(leases)))
                                                 .order_by(table.id).with_for_update())}
        incidents = {i.id: i for i in session.scalars(select(Incident).where(
            Incident.id.in_({r.incident_id for r in rows.values()})))}
        users = {u.name: u for u in session.scalars(select(User).where(
            User.name.in_({r.recipient for r in rows.values()})))}
        snapshots: dict[str, dict[str, Any]] = {}
        for delivery_id in leases:
            row = rows.get(delivery_id)
            if row is None:
                skipped[delivery_id] = "missing"
                continue
            if replay and row.status == "failed":  # `deadletters replay`: the operator asks for one more round
                row.status, row.attempts, row.next_attempt_at = "pending", 0, now
            if row.status != "pending":
                skipped[delivery_id] = row.status
                continue
            lease, held = leases[delivery_id], row.next_attempt_at
            if held is not None and held > now and (lease is None or iso(held) != lease):
                skipped[delivery_id] = "held"  # another attempt holds a live lease (a duplicate or stale message)
                continue
            incident = incidents.get(row.incident_id)
            if incident is None or incident.escalation_token != row.escalation_token:
                row.status, row.updated_at = "stale", now
                row.last_error = "not sent: the incident was acknowledged, paused, resolved or moved to another step"
                metrics.NOTIFICATIONS_SENT.labels(channel=row.channel, outcome="stale").inc()
                skipped[delivery_id] = "stale"
                continue
            row.attempts += 1
            row.next_attempt_at = now + timedelta(seconds=lease_secs())
            row.updated_at = now
            user = users.get(row.recipient)
            contact = dict(user.contact or {}) if user is not None else {}
            if user is not None and user.email:
                contact.setdefault("email", user.email)
            if incident.id not in snapshots:
                snapshots[incident.id] = incident_to_dict(incident)
            claims.append(_Claim(row.id, row.channel, snapshots[incident.id], contact, row.idempotency_key,
                                 row.attempts))
    return claims, skipped


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


def send_now(channel: str, incident: dict[str, Any], contact: dict[str, Any], key: str,
             outbound: OutboundSettings | None = None) -> Sent:
    """Send one message through `channel` now, outside the delivery records (a playbook's `notify`
    step, which keeps its own attempts); raises DeliveryError."""
    return _send(_Claim(0, channel, incident, contact, key, 1), outbound or get_outbound_settings())


def _attempt(claim: _Claim, outbound: OutboundSettings) -> Sent | DeliveryError:
    try:
        return _send(claim, outbound)
    except DeliveryError as exc:
        return exc


def _retry_at(exc: DeliveryError, attempts: int, now: datetime) -> datetime:
    # full jitter over 5 s * 2^(n-1), capped at 10 min; an open breaker's or a receiver's wait is a floor
    delay = random.uniform(0, min(600.0, 5.0 * 2 ** (attempts - 1)))
    return now + timedelta(seconds=max(delay, exc.retry_after_secs or 0.0))


def deliver_many(items: Sequence[tuple[int, str | None]], replay: bool = False) -> dict[int, dict[str, Any]]:
    """Send delivery records given as (id, lease) (see the module docstring): claimed in one
    transaction, sent concurrently (SEND_THREADS at a time, so one slow target holds one thread, not
    the batch), outcomes recorded in one transaction. Returns what happened to each."""
    now = datetime.now(timezone.utc)
    claims, skipped = _claim_many(items, replay, now)
    results: dict[int, dict[str, Any]] = {i: {"id": i, "status": why} for i, why in skipped.items()}
    if not claims:
        return results
    outbound = get_outbound_settings()
    if len(claims) == 1:
        outcomes = [_attempt(claims[0], outbound)]
    else:
        with ThreadPoolExecutor(max_workers=min(SEND_THREADS, len(claims))) as pool:
            outcomes = list(pool.map(lambda c: _attempt(c, outbound), claims))
    dead: list[tuple[_Claim, DeliveryError]] = []
    done = datetime.now(timezone.utc)
    table: Any = NotificationDelivery
    with unit_of_work() as session:
        rows = {r.id: r for r in session.scalars(select(table).where(table.id.in_([c.id for c in claims]))
                                                 .order_by(table.id).with_for_update())}
        for claim, outcome in zip(claims, outcomes, strict=True):
            row = rows.get(claim.id)
            if row is None or row.status != "pending":
                results[claim.id] = {"id": claim.id, "status": row.status if row else "missing"}
            elif isinstance(outcome, DeliveryError):
                results[claim.id] = _failed(row, claim, outcome, done)
                if results[claim.id]["status"] == "failed":
                    dead.append((claim, outcome))
            else:
                row.status, row.last_error, row.updated_at = "sent", None, done
                row.reason = {**(row.reason or {}), "delivery": {
                    "response_code": outcome.status_code, "reference": dict(outcome.reference),
                    "target": outcome.target, "attempts": row.attempts, "sent_at": iso(done)}}
                results[claim.id] = {"id": claim.id, "status": "sent", "response_code": outcome.status_code}
    for claim, exc in dead:
        record_dead_letter(TASK_NAME, "notifications", [claim.id], {"replay": True}, exc, None, claim.attempts)
        metrics.DEAD_LETTERS.labels(task=TASK_NAME).inc()
        log.error("notification failed for good; dead-lettered", extra={
            "delivery_id": claim.id, "channel": claim.channel, "error": str(exc)[:300]})
    sent = sum(1 for r in results.values() if r["status"] == "sent")
    if sent:
        log.info("notifications sent", extra={"sent": sent, "records": len(items)})
    return results


def deliver(delivery_id: int, lease: str | None = None, replay: bool = False) -> dict[str, Any]:
    """Send one delivery record (a batch of one)."""
    return deliver_many([(delivery_id, lease)], replay)[delivery_id]


def _failed(row: Any, claim: _Claim, exc: DeliveryError, now: datetime) -> dict[str, Any]:
    # an open breaker or a reached rate limit tried nothing: wait for it without spending an attempt
    untried = exc.kind in ("circuit_open", "rate_limited")
    final = not untried and (not exc.retryable or claim.attempts >= max_attempts())
    if untried:
        row.attempts = max(0, row.attempts - 1)
    row.last_error = str(exc)[:2000]
    row.updated_at = now
    row.reason = {**(row.reason or {}), "delivery": {"response_code": exc.status, "error_kind": exc.kind,
                                                     "attempts": row.attempts, "failed_at": iso(now)}}
    if final:
        row.status = "failed"
        return {"id": claim.id, "status": "failed", "error": str(exc)}
    row.next_attempt_at = _retry_at(exc, claim.attempts, now)
    log.warning("notification attempt failed; will retry", extra={
        "delivery_id": claim.id, "channel": claim.channel, "attempt": claim.attempts, "error": str(exc)[:300]})
    return {"id": claim.id, "status": "retrying", "error": str(exc)}


def incident_notifications(incident_id: str) -> dict[str, Any]:
    """`GET /api/v1/incidents/{id}/notifications`: the incident's delivery records, oldest first
    (IncidentNotFound for an unknown id; a merged id answers for the incident it joined)."""
    from app.adapters.db import read_session
    from app.services.deliveries import deliveries_of
    from app.services.incidents import get_incident

    incident = get_incident(incident_id)
    with read_session() as session:
        return {"incident_id": incident["id"], "items": deliveries_of(session, incident["id"]), "next_cursor": None}
