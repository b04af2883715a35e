"""PagerDuty's Events API v2, inbound: `trigger` ingests, `acknowledge` and `resolve` act on the
incident open for the dedup key, as PagerDuty does. Pure parsing (`parse_pagerduty`, mirroring
PagerDuty's own validation), then `handle_pagerduty` runs the command."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from app.services import incidents
from app.services.ingest import Dispatcher, NewEvent, ingest_events
from app.services.payloads import InvalidPayload, parse_time

log = logging.getLogger(__name__)

PAGERDUTY_SOURCE = "pagerduty"
PAGERDUTY_ACTIONS = ("trigger", "acknowledge", "resolve")
PAGERDUTY_SEVERITIES = ("critical", "error", "warning", "info")


@dataclass(frozen=True)
class PagerDutyCommand:
    action: str
    dedup_key: str
    routing_key: str | None
    event: NewEvent | None = None  # for trigger


def parse_pagerduty(body: Any) -> PagerDutyCommand:
    """A PagerDuty Events API v2 event → a command. Mirrors PagerDuty's own validation."""
    if not isinstance(body, Mapping):
        raise InvalidPayload("Event object is invalid", {"_schema": ["expected a JSON object"]})
    errors: dict[str, list[str]] = {}
    action = body.get("event_action")
    if action not in PAGERDUTY_ACTIONS:
        errors["event_action"] = [f"must be one of {', '.join(PAGERDUTY_ACTIONS)}"]
    dedup_key = body.get("dedup_key")
    if dedup_key is not None and (not isinstance(dedup_key, str) or not dedup_key or len(dedup_key) > 255):
        errors["dedup_key"] = ["must be a non-empty string of at most 255 characters"]
    if action in ("acknowledge", "resolve") and not dedup_key:
        errors["dedup_key"] = [f"is required for {action}"]
    routing_key = body.get("routing_key")
    if routing_key is not None and not isinstance(routing_key, str):
        errors["routing_key"] = ["must be a string"]
    payload = body.get("payload")
    timestamp: datetime | None = None
    if action == "trigger":
        if not isinstance(payload, Mapping):
            errors["payload"] = ["is required for trigger and must be an object"]
        else:
            summary = payload.get("summary")
            if not isinstance(summary, str) or not summary.strip() or len(summary) > 1024:
                errors["payload.summary"] = ["is required (1..1024 characters)"]
            if not isinstance(payload.get("source"), str) or not payload.get("source"):
                errors["payload.source"] = ["is required"]
            if payload.get("severity") not in PAGERDUTY_SEVERITIES:
                errors["payload.severity"] = [f"must be one of {', '.join(PAGERDUTY_SEVERITIES)}"]
            for name in ("component", "group", "class"):
                if payload.get(name) is not None and not isinstance(payload.get(name), str):
                    errors[f"payload.{name}"] = ["must be a string"]
            if "custom_details" in payload and not isinstance(payload["custom_details"], (Mapping, str, type(None))):
                errors["payload.custom_details"] = ["must be an object or a string"]
            try:
                timestamp = parse_time(payload.get("timestamp"), "payload.timestamp")
            except InvalidPayload as exc:
                errors.update(exc.details)
    if errors:
        raise InvalidPayload("Event object is invalid", errors)
    key = str(dedup_key) if dedup_key else uuid.uuid4().hex
    if action != "trigger":
        return PagerDutyCommand(str(action), key, routing_key)
    assert isinstance(payload, Mapping)
    details = payload.get("custom_details")
    tags = {"pagerduty_source": str(payload["source"])}
    for name in ("component", "group", "class"):
        if payload.get(name):
            tags[name] = str(payload[name])
    if isinstance(details, Mapping):
        for name in ("category", "service", "environment"):
            if isinstance(details.get(name), str):
                tags.setdefault(name, details[name])
    event = NewEvent(
        source=PAGERDUTY_SOURCE,
        event_id=f"pd-{uuid.uuid4().hex}",
        title=str(payload["summary"]).strip()[:500],
        raw={k: v for k, v in body.items() if k != "routing_key"},  # the routing key is a credential
        event_type=str(payload.get("class") or "alert"),
        category=tags.get("category"),
        description=details if isinstance(details, str) else json.dumps(details, sort_keys=True) if details else "",
        severity=str(payload["severity"]),
        timestamp=timestamp,
        tags=tags,
        service=str(payload.get("component")) if payload.get("component") else None,
        dedup_key=key,
    )
    return PagerDutyCommand("trigger", key, routing_key, event)


@dataclass(frozen=True)
class PagerDutyOutcome:
    action: str
    dedup_key: str
    incident_id: str | None


def handle_pagerduty(command: PagerDutyCommand, dispatcher: Dispatcher | None) -> PagerDutyOutcome:
    """Trigger ingests durably; acknowledge/resolve act on the incident open for the dedup key
    (nothing open: accepted and ignored, as PagerDuty does)."""
    if command.action == "trigger":
        assert command.event is not None
        [result] = ingest_events([command.event], dispatcher=dispatcher, door="pagerduty")
        return PagerDutyOutcome("trigger", command.dedup_key, result.incident_id)
    if command.action == "acknowledge":
        incident_id = incidents.acknowledge_by_dedup_key(PAGERDUTY_SOURCE, command.dedup_key, actor="pagerduty")
    else:
        incident_id = incidents.resolve_by_dedup_key(PAGERDUTY_SOURCE, command.dedup_key, actor="pagerduty",
                                           notes="PagerDuty Events API v2: resolve")
    if incident_id is None:
        log.info("pagerduty event for no open incident",
                 extra={"action": command.action, "dedup_key": command.dedup_key})
    return PagerDutyOutcome(command.action, command.dedup_key, incident_id)
