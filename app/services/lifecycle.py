"""Incident lifecycle notifications as delivery records, written in the transaction that makes the
change (so a committed change is never left unannounced, and a rolled-back one never announced):

- `incident_created` (the pipeline's route stage, once per incident, after classification, so a
  webhook's severity/category conditions see the final values): webhooks whose triggers take it,
  and a JIRA issue when JIRA is enabled;
- `incident_acknowledged` / `incident_resolved` / `incident_closed` (every status change through the
  incidents service): webhooks whose triggers take it; PagerDuty `acknowledge` / `resolve` on the
  same `dedup_key` when a trigger went out (`resolve` only with `auto_resolve`); Slack `chat.update`
  of the posted messages (bot token); a JIRA comment on the incident's issue, unless the change
  came from JIRA itself (`jira:` actors: no echo back).

Each record is sent by app/services/notifications.py like an escalation page (claimed, retried,
dead-lettered); its step names the event and the change's time, so its idempotency key is stable
per (incident, event, channel, target). docs/notifications.md, "Incident lifecycle".
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.adapters.escalation_models import NotificationDelivery
from app.config.outbound import get_outbound_settings
from app.services.deliveries import idempotency_key, insert_deliveries

LIFECYCLE_TOKEN = ""  # the escalation_token of a lifecycle record: no escalation step to go stale
TARGET_TYPE = "integration"
STATUS_EVENTS = {"ACKNOWLEDGED": "incident_acknowledged", "RESOLVED": "incident_resolved",
                 "CLOSED": "incident_closed"}
JIRA_ACTOR_PREFIX = "jira:"


def _row(incident_id: str, step: str, channel: str, target: str, reason: dict[str, Any],
         now: datetime) -> dict[str, Any]:
    return {"incident_id": incident_id, "escalation_token": LIFECYCLE_TOKEN, "step": step, "level": 0,
            "channel": channel, "target_type": TARGET_TYPE, "target_id": target, "recipient": target,
            "status": "pending", "attempts": 0, "last_error": None,
            "idempotency_key": idempotency_key(incident_id, step, target, channel), "reason": reason,
            "created_at": now, "updated_at": now, "next_attempt_at": now}


def _step(event: str, now: datetime) -> str:
    # once per incident for creation; a status can be reached more than once (resolve, reopen, resolve)
    if event == "incident_created":
        return "created"
    return f"{event.removeprefix('incident_')}.{int(now.timestamp() * 1000)}"


def on_created(session: Session, incidents: Sequence[Mapping[str, Any]], now: datetime) -> int:
    """Records for newly opened incidents (`id`, `severity`, `category`, `source`, `service`)."""
    outbound = get_outbound_settings()
    if not incidents or not (outbound.webhooks or outbound.jira.enabled):
        return 0
    rows: list[dict[str, Any]] = []
    event, step = "incident_created", _step("incident_created", now)
    for incident in incidents:
        for hook in outbound.webhooks:
            if hook.wants(event, incident):
                rows.append(_row(str(incident["id"]), step, "webhook", hook.name,
                                 {"event": event, "webhook": hook.name}, now))
        if outbound.jira.enabled:
            rows.append(_row(str(incident["id"]), step, "jira", "jira", {"event": event}, now))
    return insert_deliveries(session, rows) if rows else 0


def on_status(session: Session, incident: Mapping[str, Any], status: str, actor: str, now: datetime) -> int:
    """Records for one incident's status change (inside the change's transaction)."""
    event = STATUS_EVENTS.get(status)
    outbound = get_outbound_settings()
    if event is None:
        return 0
    incident_id, step = str(incident["id"]), _step(event, now)
    rows = [_row(incident_id, step, "webhook", hook.name, {"event": event, "webhook": hook.name}, now)
            for hook in outbound.webhooks if hook.wants(event, incident)]
    mirrored = {"pagerduty": outbound.pagerduty.enabled and (event == "incident_acknowledged"
                                                              or outbound.pagerduty.auto_resolve),
                "slack": outbound.slack.enabled and bool(outbound.slack.bot_token),
                "jira": outbound.jira.enabled and not actor.startswith(JIRA_ACTOR_PREFIX)}
    wanted = [channel for channel, on in mirrored.items() if on]
    if wanted:
        table: Any = NotificationDelivery
        # mirror only what went out, is going out, or was tried (an attempt whose answer was lost, a
        # timeout, may have reached the receiver): a page never tried goes stale on its own. The
        # record waits for the earlier ones of its stream (app/services/notifications.py claims).
        went_out = table.status.in_(("sending", "sent")) | (table.status.in_(("pending", "failed"))
                                                             & (table.attempts > 0))
        earlier = set(session.scalars(select(table.channel).where(
            table.incident_id == incident_id, table.channel.in_(wanted), went_out,
            (table.target_type != TARGET_TYPE) | (table.step == "created")).distinct()))
        for channel in wanted:
            if channel in earlier and not (channel == "jira" and event == "incident_acknowledged"):
                rows.append(_row(incident_id, step, channel, channel, {"event": event, "actor": actor}, now))
    return insert_deliveries(session, rows) if rows else 0
