"""The `notifications` queue: sending through the channels (app.adapters.channels) under each
target's circuit breaker. Tasks are thin: they call one service function."""

from __future__ import annotations

import logging
import os

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


@app.task(name="notifications.jira_sync")
def jira_sync() -> dict[str, object]:
    """Beat: poll JIRA for issues updated since the last poll and map their status back."""
    from app.services.jira_sync import poll

    return poll()


RUNS_PER_DISPATCH = 2  # deliver_due messages per beat run that finds work (one run per process at a time)


@app.task(name="notifications.dispatch")
def dispatch() -> int:
    """Beat: when delivery records are due, start delivery runs (a run in a process that already
    has one returns at once; a run keeps claiming while records are due)."""
    from app.services.notifications import any_due

    if not any_due():
        return 0
    expires = max(float(os.environ.get("NOTIFICATIONS_DISPATCH_SECS", "2")) * 2, 2.0)
    for _ in range(RUNS_PER_DISPATCH):
        deliver_due.apply_async(expires=expires)
    return RUNS_PER_DISPATCH


@app.task(name="notifications.deliver_due")
def deliver_due() -> dict[str, object]:
    """Claim due delivery records and send them (app.services.notifications), writing each
    outcome as it completes."""
    from app.services.notifications import deliver_run

    return deliver_run()


@app.task(name="notifications.deliver")
def deliver(delivery_id: int, replay: bool = False) -> dict[str, object]:
    """Send one delivery record now (the dead letter replay: `replay` gives a failed record one
    more round of attempts)."""
    from app.services.notifications import deliver as send_record

    return send_record(delivery_id, replay)
