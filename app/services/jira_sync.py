"""JIRA two-way sync: JIRA status back into incidents (`integrations.jira.sync`, enabled and
bidirectional).

Beat's `notifications.jira_sync` asks every `JIRA_SYNC_CHECK_SECS`; a poll runs when
`sync_interval_seconds` passed since the last one. A poll searches (REST v3,
`POST /rest/api/3/search`) the issues that carry an incident id in `incident_id_field` and were
updated since the last poll (JQL `updated >= "<last poll>"`, minute resolution, one minute of
overlap), page by page, and applies `status_mapping` (default `Done` -> RESOLVED): an active incident
whose issue reached a mapped status is resolved (or closed) through the incidents service as
`jira:<issue key>`. Changes made as a `jira:` actor are not pushed back to JIRA (no echo loop);
webhooks, PagerDuty and Slack still hear of them. Seeing an issue twice changes nothing twice (an
incident already resolved is left alone). The cursor (the poll's start time) and a lock live in
Redis; without Redis the sync reports `needs_redis`. docs/notifications.md, "JIRA".
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from app import metrics
from app.adapters.channels import jira
from app.adapters.http_client import DeliveryError
from app.adapters.redis_client import get_redis
from app.config.outbound import get_outbound_settings
from app.domain.incident import IllegalTransition, IncidentNotFound
from app.services import incidents
from app.services.lifecycle import JIRA_ACTOR_PREFIX

log = logging.getLogger(__name__)

CURSOR_KEY = "im:jira:sync-cursor"
LOCK_KEY = "im:jira:sync-lock"
OVERLAP = timedelta(minutes=1)  # JQL dates have minute resolution
PAGE = 100
MAX_PAGES = 50


def jql_time(at: datetime) -> str:
    """JIRA's JQL date form (`yyyy-MM-dd HH:mm`, UTC: the sync user's JIRA time zone should be UTC)."""
    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")


def poll(now: datetime | None = None, force: bool = False) -> dict[str, Any]:
    """One sync run if due (or `force`): returns what it saw and changed."""
    outbound = get_outbound_settings()
    settings = outbound.jira
    if not (settings.enabled and settings.sync_enabled):
        return {"status": "disabled"}
    client = get_redis()
    if client is None:
        return {"status": "needs_redis"}
    now = now or datetime.now(timezone.utc)
    last_raw = client.get(CURSOR_KEY)
    last = datetime.fromisoformat(last_raw.decode() if isinstance(last_raw, bytes) else str(last_raw)) \
        if last_raw else None
    if not force and last is not None and (now - last).total_seconds() < settings.sync_interval_secs:
        return {"status": "not_due"}
    if not client.set(LOCK_KEY, "1", nx=True, px=300_000):
        return {"status": "busy"}
    seen = changed = 0
    try:
        since = (last or now - timedelta(seconds=settings.sync_interval_secs)) - OVERLAP
        for page in range(MAX_PAGES):
            try:
                answer = jira.search_updated(outbound, jql_time(since), page * PAGE, PAGE)
            except DeliveryError as exc:
                metrics.JIRA_SYNC.labels(outcome="error").inc()
                log.warning("jira sync failed; the next run tries again", extra={"error": str(exc)[:300]})
                return {"status": "error", "error": str(exc), "seen": seen, "changed": changed}
            issues = answer.get("issues") or []
            for issue in issues:
                seen += 1
                changed += _apply(issue, settings.incident_id_field, settings.status_mapping)
            if len(issues) < PAGE or page * PAGE + len(issues) >= int(answer.get("total") or 0):
                break
        client.set(CURSOR_KEY, now.isoformat())
    finally:
        client.delete(LOCK_KEY)
    metrics.JIRA_SYNC.labels(outcome="ok").inc()
    if changed:
        log.info("jira sync changed incidents", extra={"seen": seen, "changed": changed})
    return {"status": "ok", "seen": seen, "changed": changed}


def _apply(issue: dict[str, Any], id_field: str, mapping: dict[str, str] | Any) -> int:
    fields = issue.get("fields") or {}
    incident_id, key = fields.get(id_field), str(issue.get("key") or "?")
    status = fields.get("status") or {}
    target = mapping.get(str(status.get("name") or ""))
    if not incident_id or target is None:
        return 0
    actor = f"{JIRA_ACTOR_PREFIX}{key}"
    try:
        current = incidents.get_incident(str(incident_id))
        if current["status"] in ("RESOLVED", "CLOSED") and (target == "RESOLVED" or current["status"] == "CLOSED"):
            return 0  # already there: an issue seen twice changes nothing twice
        if target == "CLOSED":
            incidents.close(str(incident_id), actor, notes=f"Closed in JIRA ({key}: {status.get('name')})")
        else:
            incidents.resolve(str(incident_id), actor, method="JIRA",
                              notes=f"Resolved in JIRA ({key}: {status.get('name')})")
    except (IncidentNotFound, IllegalTransition) as exc:
        log.warning("jira sync: status not applied", extra={"issue": key, "incident_id": incident_id,
                                                            "error": str(exc)[:300]})
        return 0
    return 1
