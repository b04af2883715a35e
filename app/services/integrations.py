"""The non-REST doors' use cases: Alertmanager and PagerDuty payloads, WebSocket frames, Shield's
auto-page, incident updates and correlations for gRPC.

Pure functions turn what a door received into `NewEvent`s or commands (and raise `InvalidPayload`
with field-by-field details); the `handle_*` functions run them against the ingest and incident
services. Nothing here knows HTTP, gRPC or WebSockets.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from sqlalchemy import or_, select

from app.adapters.db import read_session
from app.adapters.models import Incident
from app.config import Settings, get_settings
from app.domain.fingerprint import fingerprint
from app.domain.incident import IllegalTransition, IncidentNotFound
from app.services import incidents
from app.services.ingest import Dispatcher, NewEvent, ingest_events

log = logging.getLogger(__name__)

ALERTMANAGER_SOURCE = "alertmanager"
PAGERDUTY_SOURCE = "pagerduty"
EDGE_AGENT_SOURCE = "llm-edge-agent"


class InvalidPayload(ValueError):
    """What a door received does not match its format; `details` is {field: [messages]}."""

    def __init__(self, message: str, details: Mapping[str, Any] | None = None, code: str = "validation_failed") -> None:
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})
        self.code = code


def _parse_time(value: Any, field_name: str) -> datetime | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise InvalidPayload(f"{field_name} must be an RFC 3339 time", {field_name: ["expected an RFC 3339 string"]})
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Go (Alertmanager) writes nanoseconds; Python keeps microseconds.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits):]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidPayload(f"{field_name} is not an RFC 3339 time",
                             {field_name: [f"not an RFC 3339 time: {value!r}"]}) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def _string_map(value: Any, field_name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidPayload(f"{field_name} must be an object of strings",
                             {field_name: ["expected an object of strings"]})
    return {str(k): v for k, v in value.items()}


# ------------------------------------------------------------------------------------ dedup key lookup

def dedup_fingerprint(source: str, dedup_key: str) -> str:
    """The incident fingerprint ingest gives events of `source` carrying this explicit dedup key."""
    return fingerprint({"source": source, "dedup_key": dedup_key})


def find_active_incident(source: str, dedup_key: str) -> str | None:
    """The id of the active (not resolved/closed) incident opened for `dedup_key`, if any."""
    with read_session() as session:
        return session.scalars(
            select(Incident.id).where(
                Incident.fingerprint == dedup_fingerprint(source, dedup_key),
                Incident.merged_into.is_(None),
                Incident.status.in_(("NEW", "ACKNOWLEDGED", "IN_PROGRESS", "ESCALATED")),
            )
        ).first()


# ------------------------------------------------------------------------------------------ Alertmanager

@dataclass(frozen=True)
class AlertmanagerBatch:
    firing: list[NewEvent]
    resolved: list[tuple[str, str]]  # (alert fingerprint, alertname)


def parse_alertmanager(body: Any) -> AlertmanagerBatch:
    """Alertmanager webhook payload version 4 → events to ingest and alerts to resolve.

    Per alert: labels give title (alertname), severity, service (service, else job), tags (all
    labels); annotations give the description; `fingerprint` is the dedup key; `startsAt` makes the
    event id, so Alertmanager's repeated notifications of one firing are duplicates.
    """
    if not isinstance(body, Mapping):
        raise InvalidPayload("the body must be a JSON object", {"_schema": ["expected a JSON object"]})
    errors: dict[str, list[str]] = {}
    if str(body.get("version", "")) != "4":
        errors["version"] = [f"expected webhook payload version \"4\", got {body.get('version')!r}"]
    alerts = body.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        errors["alerts"] = ["expected a non-empty list of alerts"]
    if errors:
        raise InvalidPayload("not an Alertmanager webhook (version 4) payload", errors)
    common_labels = _string_map(body.get("commonLabels"), "commonLabels")
    firing: list[NewEvent] = []
    resolved: list[tuple[str, str]] = []
    for i, alert in enumerate(alerts or []):
        try:
            event, status = _alertmanager_alert(alert, common_labels)
        except InvalidPayload as exc:
            raise InvalidPayload(f"alerts[{i}]: {exc.message}",
                                 {f"alerts.{i}.{k}": v for k, v in exc.details.items()}) from None
        if status == "firing":
            firing.append(event)
        else:
            resolved.append((str(event.dedup_key), event.title))
    return AlertmanagerBatch(firing, resolved)


def _alertmanager_alert(alert: Any, common_labels: Mapping[str, str]) -> tuple[NewEvent, str]:
    if not isinstance(alert, Mapping):
        raise InvalidPayload("expected an alert object", {"_schema": ["expected an object"]})
    status = alert.get("status")
    if status not in ("firing", "resolved"):
        raise InvalidPayload("status must be firing or resolved", {"status": ["expected \"firing\" or \"resolved\""]})
    labels = {**common_labels, **_string_map(alert.get("labels"), "labels")}
    annotations = _string_map(alert.get("annotations"), "annotations")
    alertname = labels.get("alertname")
    if not alertname:
        raise InvalidPayload("labels.alertname is required", {"labels": ["alertname is required"]})
    starts_at = _parse_time(alert.get("startsAt"), "startsAt")
    alert_fp = alert.get("fingerprint")
    if not isinstance(alert_fp, str) or not alert_fp:
        # Alertmanager always sends one; compute a stable one from the labels for other senders.
        alert_fp = fingerprint({"source": ALERTMANAGER_SOURCE, "title": json.dumps(labels, sort_keys=True)},
                               ("source", "title"))[:16]
    description = "\n\n".join(v for v in (annotations.get("summary"), annotations.get("description")) if v)
    event = NewEvent(
        source=ALERTMANAGER_SOURCE,
        event_id=f"{alert_fp}:{alert.get('startsAt') or ''}",
        title=annotations.get("title") or alertname,
        raw=dict(alert),
        event_type="alert",
        category=labels.get("category"),
        description=description,
        severity=labels.get("severity"),
        timestamp=starts_at,
        resource={"type": "instance", "id": labels["instance"]} if labels.get("instance") else None,
        tags=labels,
        service=labels.get("service") or labels.get("job"),
        dedup_key=alert_fp,
    )
    return event, str(status)


@dataclass(frozen=True)
class AlertOutcome:
    status: str  # accepted | duplicate | resolved | not_open
    alert: str
    incident_id: str | None = None


def handle_alertmanager(batch: AlertmanagerBatch, dispatcher: Dispatcher | None) -> list[AlertOutcome]:
    """Ingest the firing alerts (durably), then resolve the incidents of the resolved ones."""
    outcomes: list[AlertOutcome] = []
    if batch.firing:
        results = ingest_events(batch.firing, dispatcher=dispatcher, door="alertmanager")
        for event, result in zip(batch.firing, results, strict=True):
            outcomes.append(AlertOutcome(result.status, event.title, result.incident_id))
    for alert_fp, alertname in batch.resolved:
        incident_id = resolve_by_dedup_key(ALERTMANAGER_SOURCE, alert_fp, actor="alertmanager",
                                           notes=f"Alertmanager: {alertname} resolved")
        outcomes.append(AlertOutcome("resolved" if incident_id else "not_open", alertname, incident_id))
    return outcomes


def resolve_by_dedup_key(source: str, dedup_key: str, actor: str, notes: str | None = None) -> str | None:
    """Resolve the active incident of `dedup_key`; its id, or None when none is open."""
    incident_id = find_active_incident(source, dedup_key)
    if incident_id is None:
        return None
    try:
        incidents.resolve(incident_id, resolved_by=actor, method="Automatic", notes=notes)
    except IllegalTransition:
        return None  # resolved by someone else in between: the goal holds
    return incident_id


def acknowledge_by_dedup_key(source: str, dedup_key: str, actor: str) -> str | None:
    """Acknowledge the active incident of `dedup_key` (already acknowledged is fine); its id or None."""
    incident_id = find_active_incident(source, dedup_key)
    if incident_id is None:
        return None
    try:
        incidents.acknowledge(incident_id, actor)
    except IllegalTransition:
        pass  # already acknowledged (or moved on): PagerDuty treats a repeat as success
    return incident_id


# ------------------------------------------------------------------------------------------ PagerDuty

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
                timestamp = _parse_time(payload.get("timestamp"), "payload.timestamp")
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
        incident_id = acknowledge_by_dedup_key(PAGERDUTY_SOURCE, command.dedup_key, actor="pagerduty")
    else:
        incident_id = resolve_by_dedup_key(PAGERDUTY_SOURCE, command.dedup_key, actor="pagerduty",
                                           notes="PagerDuty Events API v2: resolve")
    if incident_id is None:
        log.info("pagerduty event for no open incident",
                 extra={"action": command.action, "dedup_key": command.dedup_key})
    return PagerDutyOutcome(command.action, command.dedup_key, incident_id)


# ------------------------------------------------------------------------------------------ WebSocket

@dataclass
class WsFrame:
    """A decoded client frame: `event` (one raw event), `batch` (raw events) or `heartbeat`."""

    type: str
    events: list[Any] = field(default_factory=list)
    batch_id: str | None = None
    timestamp: str | None = None


def _gunzip(data: bytes, limit: int) -> bytes:
    """gzip (or zlib) → bytes, refusing more than `limit` bytes out (no decompression bombs)."""
    try:
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # auto-detect gzip / zlib header
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise InvalidPayload(f"events: not valid gzip data ({exc})", {"events": ["not valid gzip data"]},
                             code="bad_compression") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise InvalidPayload(f"events: decompressed batch exceeds {limit} bytes", {"events": [f"over {limit} bytes"]},
                             code="message_too_large")
    return out


def _json(data: bytes | str, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidPayload(f"{what} is not valid JSON: {exc}", {"_schema": ["not valid JSON"]},
                             code="malformed_json") from None


def _byte_indexed(value: Mapping[str, Any]) -> bytes:
    """`JSON.stringify(pako.gzip(...))`: a Uint8Array serialised as {"0": 31, "1": 139, ...}.
    Node's Buffer.toJSON form {"type": "Buffer", "data": [...]} is accepted too."""
    if value.get("type") == "Buffer" and isinstance(value.get("data"), list):
        items = value["data"]
    else:
        try:
            indexed = sorted(((int(k), v) for k, v in value.items()), key=lambda kv: kv[0])
        except ValueError:
            raise InvalidPayload("events: an object must be the byte array of gzip data (numeric keys)",
                                 {"events": ["object keys must be byte indexes 0..n-1"]},
                                 code="bad_compression") from None
        if [k for k, _ in indexed] != list(range(len(indexed))):
            raise InvalidPayload("events: byte indexes must run 0..n-1", {"events": ["byte indexes must run 0..n-1"]},
                                 code="bad_compression")
        items = [v for _, v in indexed]
    if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in items):
        raise InvalidPayload("events: byte values must be integers 0..255", {"events": ["byte values must be 0..255"]},
                             code="bad_compression")
    return bytes(items)


def decode_ws_frame(data: bytes | str, settings: Settings | None = None) -> WsFrame:
    """Decode one client message (CONTRACT decision 7).

    Text frames are JSON messages. A batch's `events` is a JSON array (plain, whatever `compression`
    says), a base64 string of gzip, or the byte-indexed object JSON.stringify makes of pako's
    Uint8Array. A binary frame is a gzip of a whole batch (or event) message.
    """
    settings = settings or get_settings()
    limit = settings.ws_max_message_bytes
    if isinstance(data, (bytes, bytearray)):
        message = _json(_gunzip(bytes(data), limit), "the decompressed binary frame")
    else:
        message = _json(data, "the message")
    if not isinstance(message, Mapping):
        raise InvalidPayload("a message must be a JSON object with a type", {"_schema": ["expected a JSON object"]},
                             code="invalid_message")
    kind = message.get("type")
    if kind == "heartbeat":
        return WsFrame("heartbeat", timestamp=str(message.get("timestamp") or "") or None)
    if kind == "event":
        return WsFrame("event", [dict(message)])
    if kind != "batch":
        raise InvalidPayload(f"unknown message type {kind!r}; expected event, batch or heartbeat",
                             {"type": ["expected event, batch or heartbeat"]}, code="unknown_type")
    events = message.get("events")
    if isinstance(events, str):
        try:
            compressed = base64.b64decode(events, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidPayload("events: a string must be base64 of gzip data", {"events": ["not valid base64"]},
                                 code="bad_compression") from None
        events = _json(_gunzip(compressed, limit), "the decompressed events")
    elif isinstance(events, Mapping):
        events = _json(_gunzip(_byte_indexed(events), limit), "the decompressed events")
    if not isinstance(events, list) or not events:
        raise InvalidPayload("events must be a non-empty array (or its gzip)",
                             {"events": ["expected a non-empty array"]},
                             code="invalid_batch")
    if len(events) > settings.max_batch_events:
        raise InvalidPayload(f"a batch holds at most {settings.max_batch_events} events, got {len(events)}",
                             {"events": [f"at most {settings.max_batch_events} events"]}, code="batch_too_large")
    count = message.get("count")
    if count is not None and count != len(events):
        raise InvalidPayload(f"count says {count} but the batch holds {len(events)} events",
                             {"count": [f"expected {len(events)}"]}, code="count_mismatch")
    batch_id = message.get("batch_id")
    return WsFrame("batch", list(events), batch_id=str(batch_id) if batch_id is not None else None)


# ------------------------------------------------------------------------------------------ gRPC

def update_incident(incident_id: str, actor: str, changes: Mapping[str, Any]) -> dict[str, Any]:
    """One call for gRPC's UpdateIncident: a status of ACKNOWLEDGED or RESOLVED goes through
    acknowledge/resolve (who/when recorded), anything else through patch."""
    fields = dict(changes)
    status = fields.get("status")
    notes = fields.pop("resolution_notes", None)
    root_cause = fields.pop("root_cause", None)
    result: dict[str, Any] | None = None
    if status == "RESOLVED":
        fields.pop("status")
        result = incidents.resolve(incident_id, resolved_by=actor, method="Manual", notes=notes, root_cause=root_cause)
    elif status == "ACKNOWLEDGED":
        fields.pop("status")
        result = incidents.acknowledge(incident_id, actor)
    if fields:
        result = incidents.patch(incident_id, actor, fields)
    if result is None:
        result = incidents.get_incident(incident_id)
    return result


@dataclass(frozen=True)
class RelatedIncident:
    incident_id: str
    score: float
    reasons: tuple[str, ...]
    title: str
    severity: str
    status: str
    created_at: datetime


@dataclass(frozen=True)
class Correlations:
    incident_id: str
    group_id: str | None
    related: list[RelatedIncident]
    time_window_secs: int
    analyzed_at: datetime


# Weights of the reasons two incidents outside one correlation group are related.
_REASON_WEIGHTS = {"fingerprint": 0.6, "service": 0.4, "event_type": 0.2, "source": 0.15, "tags": 0.15}


def analyze_correlations(incident_id: str, time_window_secs: int = 0, limit: int = 0,
                         settings: Settings | None = None) -> Correlations:
    """Incidents related to `incident_id`: first the members of its correlation group, with the
    scores and reasons the pipeline's correlation stage gave them (app.services.correlation); then
    incidents within ±window sharing its fingerprint, service or source (the pipeline may not have
    run yet, or grouped them), scored by the reasons they share. Raises IncidentNotFound."""
    from app.services.correlation import related_incidents

    settings = settings or get_settings()
    window = time_window_secs or settings.correlation.time_window_secs
    limit = limit or settings.correlation.max_group_size
    grouped = related_incidents(incident_id)  # follows merges; IncidentNotFound for an unknown id
    group = grouped.get("correlation_group") or {}
    related: list[RelatedIncident] = [
        RelatedIncident(str(m["id"]), round(float(m.get("score") or 0.0), 3),
                        ("group", *(str(r) for r in (m.get("reasons") or []))), str(m.get("title") or ""),
                        str(m.get("severity") or ""), str(m.get("status") or ""),
                        datetime.fromisoformat(str(m["created_at"]).replace("Z", "+00:00")))
        for m in grouped.get("related") or [] if m.get("created_at")
    ]
    seen = {r.incident_id for r in related}
    with read_session() as session:
        incident = session.get(Incident, grouped["incident_id"])
        if incident is None:
            raise IncidentNotFound(incident_id)
        low = incident.created_at - timedelta(seconds=window)
        high = incident.created_at + timedelta(seconds=window)
        shared = [Incident.fingerprint == incident.fingerprint, Incident.source == incident.source]
        if incident.service:
            shared.append(Incident.service == incident.service)
        candidates = list(session.scalars(
            select(Incident).where(Incident.id != incident.id, Incident.merged_into.is_(None),
                                   Incident.created_at >= low, Incident.created_at <= high, or_(*shared))
            .order_by(Incident.created_at.desc()).limit(max(limit * 4, 200))
        ))
    nearby = []
    for other in candidates:
        if other.id in seen:
            continue
        reasons = []
        if other.fingerprint == incident.fingerprint:
            reasons.append("fingerprint")
        if incident.service and other.service == incident.service:
            reasons.append("service")
        if incident.event_type and other.event_type == incident.event_type:
            reasons.append("event_type")
        if other.source == incident.source:
            reasons.append("source")
        mine, theirs = incident.tags or {}, other.tags or {}
        if any(k in theirs and theirs[k] == v for k, v in mine.items()):
            reasons.append("tags")
        score = min(1.0, sum(_REASON_WEIGHTS[r] for r in reasons))
        nearby.append(RelatedIncident(other.id, round(score, 3), tuple(reasons), other.title, other.severity,
                                      other.status, other.created_at))
    nearby.sort(key=lambda r: (-r.score, -r.created_at.timestamp()))
    related.sort(key=lambda r: (-r.score, -r.created_at.timestamp()))
    return Correlations(incident.id, group.get("id"), (related + nearby)[:limit], window, datetime.now(timezone.utc))


__all__ = [
    "AlertmanagerBatch", "InvalidPayload", "PagerDutyCommand", "WsFrame", "analyze_correlations",
    "decode_ws_frame", "find_active_incident", "handle_alertmanager", "handle_pagerduty",
    "parse_alertmanager", "parse_pagerduty", "update_incident",
]
