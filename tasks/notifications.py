"""The `notifications` queue: sending through the channels (app.adapters.channels) under each
target's circuit breaker. Tasks are thin: they call one service function."""

from __future__ import annotations

import logging

from app.adapters.channels import slack
from app.adapters.http_client import DeliveryError
from app.config.outbound import get_outbound_settings
from app.services.incidents import get_incident
from tasks.celery_app import app

log = logging.getLogger(__name__)


@app.task(name="notifications.slack_refresh")
def slack_refresh(incident_id: str, channel: str, ts: str) -> dict[str, str]:
    """Show an incident's new state on its Slack message (chat.update). A failure Slack will keep
    answering (message deleted, bot removed) is logged, not retried; others are retried."""
    try:
        slack.update(get_incident(incident_id), get_outbound_settings(), channel, ts)
    except DeliveryError as exc:
        if exc.retryable:
            raise
        log.warning("slack message not updated", extra={"incident_id": incident_id, "error": str(exc)})
        return {"status": "not_updated", "error": str(exc)}
    return {"status": "updated"}


@app.task(name="notifications.governance_push")
def governance_push() -> dict[str, object]:
    """Beat: push the governance audit events that are due (a full batch, or max_wait_ms old)."""
    from app.services.audit_push import push_due

    return push_due()


DISPATCH_BATCH = 500
DISPATCH_MAX_PER_RUN = 20_000
RECORDS_PER_TASK = 50  # one deliver_batch task sends this many records, concurrently


@app.task(name="notifications.dispatch")
def dispatch() -> int:
    """Beat: claim the due delivery records (500 at a time, up to 20,000 a run) and enqueue them in
    tasks of 50 (a Celery task per record would cost more than the send)."""
    from app.services.notifications import dispatch_due

    total = 0
    while total < DISPATCH_MAX_PER_RUN:
        claimed = dispatch_due(DISPATCH_BATCH)
        for start in range(0, len(claimed), RECORDS_PER_TASK):
            deliver_batch.delay(claimed[start:start + RECORDS_PER_TASK])
        total += len(claimed)
        if len(claimed) < DISPATCH_BATCH:
            break
    return total


@app.task(name="notifications.deliver_batch")
def deliver_batch(items: list[tuple[int, str | None]]) -> int:
    """Send claimed delivery records ([id, lease] pairs); returns how many were sent."""
    from app.services.notifications import deliver_many

    results = deliver_many([(int(i), lease or None) for i, lease in items])
    return sum(1 for r in results.values() if r["status"] == "sent")


@app.task(name="notifications.deliver")
def deliver(delivery_id: int, lease: str | None = None, replay: bool = False) -> dict[str, object]:
    """Send one delivery record; retries and dead letters are the record's (app.services.notifications)."""
    from app.services.notifications import deliver as send_record

    return send_record(delivery_id, lease, replay)
