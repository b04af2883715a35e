"""Incident use cases: read, list, change. Every change writes its timeline row in the same
transaction and is published (after commit) for subscribers."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app import metrics
from app.adapters.db import read_session, unit_of_work
from app.adapters.models import Event, Incident, TimelineEntry
from app.config import get_settings
from app.domain import sla
from app.domain.fingerprint import fingerprint
from app.domain.incident import (
    ACTIVE_STATUS_NAMES,
    IllegalTransition,
    IncidentNotFound,
    check_transition,
    follow_merges,
)
from app.domain.severity import HUMAN_DECIDERS, SOURCE_DECIDED, map_source_severity, severity_reason
from app.domain.times import iso as _iso
from app.services import changes as changes_bus
from app.services import lifecycle, sla_monitor
from app.services.ingest import Dispatcher, NewEvent, ingest_events


def manual_reason(incident: Incident, actor: str, decided_by: str = "manual") -> dict[str, Any]:
    """The `severity_reason` of a person's severity (it stands against every later automatic decision)."""
    return severity_reason(decided_by, source_severity=incident.source_severity,
                           predicted=incident.predicted_severity, confidence=incident.confidence,
                           model_version=incident.model_version, actor=actor)


def _publish(kind: str, incident: Incident, changes: list[dict[str, Any]]) -> None:
    changes_bus.publish(kind, incident_to_dict(incident), changes)


def incident_to_dict(incident: Incident) -> dict[str, Any]:
    """The incident as the REST API shows it (a bare object whose `id` is the INC id)."""
    return {
        "id": incident.id,
        "title": incident.title,
        "description": incident.description,
        "status": incident.status,
        "severity": incident.severity,
        "severity_reason": incident.severity_reason or dict(SOURCE_DECIDED),
        "source_severity": incident.source_severity,
        "predicted_severity": incident.predicted_severity,
        "predicted_category": incident.predicted_category,
        "confidence": incident.confidence,
        "model_version": incident.model_version,
        "category": incident.category,
        "source": incident.source,
        "event_type": incident.event_type,
        "fingerprint": incident.fingerprint,
        "event_count": incident.event_count,
        "first_seen": _iso(incident.first_seen),
        "last_seen": _iso(incident.last_seen),
        "created_at": _iso(incident.created_at),
        "updated_at": _iso(incident.updated_at),
        "assignee": incident.assignee,
        "team": incident.team,
        "escalation_policy": incident.escalation_policy,
        "service": incident.service,
        "resource": incident.resource,
        "metrics": incident.metrics,
        "tags": incident.tags or {},
        "acknowledged_at": _iso(incident.acknowledged_at),
        "acknowledged_by": incident.acknowledged_by,
        "resolved_at": _iso(incident.resolved_at),
        "closed_at": _iso(incident.closed_at),
        "resolution": {
            "resolved_by": incident.resolved_by,
            "method": incident.resolution_method,
            "notes": incident.resolution_notes,
            "root_cause": incident.root_cause,
            "actions_taken": incident.actions_taken or [],
        } if incident.resolved_at else None,
        "merged_into": incident.merged_into,
        "sla": {
            "acknowledge_by": _iso(incident.sla_acknowledge_by),
            "resolve_by": _iso(incident.sla_resolve_by),
            "acknowledgment_breached": incident.sla_acknowledge_breached,
            "resolution_breached": incident.sla_resolve_breached,
        },
        "escalation": {
            "level": incident.escalation_level,
            "next_escalation_at": _iso(incident.next_escalation_at),
        },
        "enrichment": incident.enrichment,
        "correlation_group_id": incident.correlation_group_id,
        "processed_at": _iso(incident.processed_at),
    }


def timeline_to_dict(entry: TimelineEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": _iso(entry.at),
        "actor": entry.actor,
        "kind": entry.kind,
        "field": entry.field,
        "old_value": entry.old_value,
        "new_value": entry.new_value,
        "details": entry.details or {},
    }


def event_to_dict(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "source": event.source,
        "event_id": event.event_id,
        "incident_id": event.incident_id,
        "event_type": event.event_type,
        "severity": event.severity,
        "title": event.title,
        "occurred_at": _iso(event.occurred_at),
        "received_at": _iso(event.received_at),
        "payload": event.payload,
        "processed_at": _iso(event.processed_at),
    }


def _resolve_merges(session: Session, incident_id: str, lock: bool = False) -> Incident:
    """The incident `incident_id` was merged into (or itself), locked FOR UPDATE when `lock`."""
    def load(current: str) -> Incident | None:
        query = select(Incident).where(Incident.id == current)
        return session.scalars(query.with_for_update() if lock else query).first()

    incident = follow_merges(incident_id, load)
    if incident is None:
        raise IncidentNotFound(incident_id)
    return incident


def get_incident(incident_id: str) -> dict[str, Any]:
    """The incident, or the incident it was merged into (GET on a given-out id always answers)."""
    with read_session() as session:
        return incident_to_dict(_resolve_merges(session, incident_id))


# ------------------------------------------------------------------------------------------ listing

@dataclass(frozen=True)
class IncidentFilter:
    status: Sequence[str] = ()
    severity: Sequence[str] = ()
    source: Sequence[str] = ()
    category: Sequence[str] = ()
    team: Sequence[str] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    q: str | None = None
    environment: Sequence[str] = ()  # tags.environment, any case (GraphQL's `environment: [PRODUCTION]`)


class InvalidCursor(ValueError):
    pass


def encode_cursor(created_at: datetime, incident_id: str) -> str:
    raw = json.dumps([created_at.astimezone(timezone.utc).isoformat(), incident_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, incident_id = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(created), str(incident_id)
    except (ValueError, TypeError) as exc:
        raise InvalidCursor(f"invalid cursor: {exc}") from None


def filter_clauses(flt: IncidentFilter) -> list[Any]:
    clauses: list[Any] = [Incident.merged_into.is_(None)]
    if flt.status:
        clauses.append(Incident.status.in_(flt.status))
    if flt.severity:
        clauses.append(Incident.severity.in_(flt.severity))
    if flt.source:
        clauses.append(Incident.source.in_(flt.source))
    if flt.category:
        clauses.append(Incident.category.in_(flt.category))
    if flt.team:
        clauses.append(Incident.team.in_(flt.team))
    if flt.created_after:
        clauses.append(Incident.created_at >= flt.created_after)
    if flt.created_before:
        clauses.append(Incident.created_at <= flt.created_before)
    if flt.environment:
        clauses.append(func.lower(Incident.tags["environment"].as_string()).in_([e.lower() for e in flt.environment]))
    if flt.q:
        pattern = f"%{flt.q.lower()}%"
        clauses.append(or_(func.lower(Incident.title).like(pattern), func.lower(Incident.description).like(pattern)))
    return clauses


def list_incidents(
    flt: IncidentFilter, limit: int = 50, cursor: str | None = None, ascending: bool = False, offset: int = 0,
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first (oldest first when `ascending`); keyset pagination on (created_at, id) after
    `cursor`, or `offset` rows skipped (GraphQL's page/pageSize)."""
    clauses = filter_clauses(flt)
    if cursor:
        created_at, incident_id = decode_cursor(cursor)
        if ascending:
            clauses.append(or_(Incident.created_at > created_at,
                               and_(Incident.created_at == created_at, Incident.id > incident_id)))
        else:
            clauses.append(or_(Incident.created_at < created_at,
                               and_(Incident.created_at == created_at, Incident.id < incident_id)))
    order = (Incident.created_at.asc(), Incident.id.asc()) if ascending else (Incident.created_at.desc(),
                                                                               Incident.id.desc())
    with read_session() as session:
        query = select(Incident).where(*clauses).order_by(*order).limit(limit + 1)
        rows = list(session.scalars(query.offset(offset) if offset else query))
    next_cursor = encode_cursor(rows[limit - 1].created_at, rows[limit - 1].id) if len(rows) > limit else None
    return [incident_to_dict(r) for r in rows[:limit]], next_cursor


def count_incidents(flt: IncidentFilter) -> int:
    """How many incidents `flt` matches (merged ones excluded, as in the listing)."""
    with read_session() as session:
        return int(session.scalar(select(func.count()).select_from(Incident).where(*filter_clauses(flt))) or 0)


def incident_timeline(incident_id: str) -> list[dict[str, Any]]:
    with read_session() as session:
        incident = _resolve_merges(session, incident_id)
        ids = {incident.id, incident_id}
        rows = session.scalars(
            select(TimelineEntry).where(TimelineEntry.incident_id.in_(ids)).order_by(TimelineEntry.at, TimelineEntry.id)
        )
        return [timeline_to_dict(r) for r in rows]


def incident_events(
    incident_id: str, limit: int = 100, after_id: int | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    with read_session() as session:
        incident = _resolve_merges(session, incident_id)
        merged = session.scalars(select(Incident.id).where(Incident.merged_into == incident.id))
        merged_ids = [incident.id, *merged]
        query = select(Event).where(Event.incident_id.in_(merged_ids))
        if after_id is not None:
            query = query.where(Event.id > after_id)
        rows = list(session.scalars(query.order_by(Event.id).limit(limit + 1)))
    next_after = rows[limit - 1].id if len(rows) > limit else None
    return [event_to_dict(r) for r in rows[:limit]], next_after


# ------------------------------------------------------------------------------------------ manual create

def manual_event(data: Mapping[str, Any], raw: Mapping[str, Any], requested_by: str) -> NewEvent:
    """The event of a manual incident from a validated ManualIncidentSchema body (REST and GraphQL)."""
    category = data.get("category") or data.get("incident_type")
    return NewEvent(
        source=data["source"],
        event_id=data.get("event_id") or f"manual-{uuid.uuid4()}",
        title=data["title"],
        raw=dict(raw),
        event_type=data.get("incident_type") or "manual",
        category=category.lower() if category else None,
        description=data.get("description") or "",
        severity=data["severity"],
        resource=data.get("resource"),
        tags=data.get("tags") or {},
        service=data.get("service"),
        team=data.get("team"),
        assignee=data.get("assignee"),
        requested_by=requested_by,
    )


def create_manual(event: NewEvent, dispatcher: Dispatcher | None = None) -> tuple[dict[str, Any], bool]:
    """A manual incident (`POST /api/v1/incidents`): ingest writes the event, the incident it opens or
    the active one it joins, and `event.assignee` (with its `assigned` timeline row) in one
    transaction. Returns the incident and whether this call opened it. A repeated `event_id` writes
    nothing and answers the incident of the first call."""
    [result] = ingest_events([event], dispatcher=dispatcher, door="manual")
    if result.incident_id is None:  # ingest answers every accepted or duplicate event with its incident
        raise IncidentNotFound(event.event_id)
    if result.created:  # the person's severity stands against the classifier (severity_reason "manual")
        mapping = get_settings().integration(event.source).severity_mapping
        keep_manual_severity(result.incident_id, event.requested_by or event.source,
                             map_source_severity(event.severity, mapping))
    incident = get_incident(result.incident_id)
    if event.assignee and result.status == "accepted" and not result.created:
        changes_bus.publish("incident_updated", incident, [{"field": "assignee", "new_value": event.assignee}])
    return incident, result.created


# ------------------------------------------------------------------------------------------ changes

def _record(session: Session, incident: Incident, actor: str, kind: str, field: str | None,
            old: Any, new: Any, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    entry = TimelineEntry(
        incident_id=incident.id, at=datetime.now(timezone.utc), actor=actor, kind=kind, field=field,
        old_value=None if old is None else str(old), new_value=None if new is None else str(new),
        details=dict(details) if details else None,
    )
    session.add(entry)
    return {"field": field, "old_value": old, "new_value": new}


def _set_status(session: Session, incident: Incident, target: str, actor: str, now: datetime) -> dict[str, Any]:
    check_transition(incident.id, incident.status, target)
    old = incident.status
    incident.status = target
    incident.updated_at = now
    if target == "ACKNOWLEDGED" and incident.acknowledged_at is None:
        incident.acknowledged_at = now
        incident.acknowledged_by = actor
    if target in ("ACKNOWLEDGED", "RESOLVED", "CLOSED"):
        # Acknowledge or resolve stops escalation; a new token makes in-flight steps stale.
        incident.next_escalation_at = None
        incident.escalation_token = None
    if target == "RESOLVED":
        incident.resolved_at = now
    if target == "CLOSED":
        incident.closed_at = now
        if incident.resolved_at is None:
            incident.resolved_at = now
    if target == "IN_PROGRESS" and old == "RESOLVED":
        incident.resolved_at = None
    # webhooks, PagerDuty, Slack and JIRA hear of it through delivery records of this transaction
    lifecycle.on_status(session, {"id": incident.id, "severity": incident.severity, "category": incident.category,
                                  "source": incident.source, "service": incident.service}, target, actor, now)
    return _record(session, incident, actor, "status_changed", "status", old, target)


def _change(incident_id: str, actor: str, apply: Callable[[Session, Incident, datetime], list[dict[str, Any]]],
            event_kind: str) -> dict[str, Any]:
    with unit_of_work() as session:
        incident = _resolve_merges(session, incident_id, lock=True)
        now = datetime.now(timezone.utc)
        changes = apply(session, incident, now)
        session.flush()
        snapshot = incident
    if changes:
        _publish(event_kind, snapshot, changes)
    return incident_to_dict(snapshot)


def acknowledge(incident_id: str, actor: str) -> dict[str, Any]:
    def apply(session: Session, incident: Incident, now: datetime) -> list[dict[str, Any]]:
        change = _set_status(session, incident, "ACKNOWLEDGED", actor, now)
        sla_monitor.flag_late_answer(session, incident, now, actor)
        return [change]

    return _change(incident_id, actor, apply, "incident_acknowledged")


def resolve(incident_id: str, resolved_by: str, method: str = "Manual", notes: str | None = None,
            root_cause: str | None = None, actions_taken: Sequence[str] | None = None,
            corrected_severity: str | None = None) -> dict[str, Any]:
    def apply(session: Session, incident: Incident, now: datetime) -> list[dict[str, Any]]:
        changes = [_set_status(session, incident, "RESOLVED", resolved_by, now)]
        incident.resolved_by = resolved_by
        incident.resolution_method = method
        incident.resolution_notes = notes
        incident.root_cause = root_cause
        incident.actions_taken = list(actions_taken or [])
        if corrected_severity and corrected_severity != incident.severity:
            incident.severity_reason = manual_reason(incident, resolved_by)
            changes.append(_record(session, incident, resolved_by, "severity_corrected", "severity",
                                   incident.severity, corrected_severity,
                                   {"severity_reason": incident.severity_reason}))
            incident.severity = corrected_severity
        if corrected_severity:  # a person's severity at resolution is a label the classifier learns from
            from app.services.feedback import record_resolution_sample

            record_resolution_sample(session, incident, corrected_severity, resolved_by)
        sla_monitor.flag_late_answer(session, incident, now, resolved_by)
        return changes

    result = _change(incident_id, resolved_by, apply, "incident_resolved")
    metrics.INCIDENTS_RESOLVED.inc()
    return result


def close(incident_id: str, actor: str, notes: str | None = None) -> dict[str, Any]:
    def apply(session: Session, incident: Incident, now: datetime) -> list[dict[str, Any]]:
        change = _set_status(session, incident, "CLOSED", actor, now)
        if notes:
            incident.resolution_notes = (incident.resolution_notes + "\n" if incident.resolution_notes else "") + notes
        return [change]

    return _change(incident_id, actor, apply, "incident_closed")


def keep_manual_severity(incident_id: str, actor: str, severity: str) -> None:
    """A manually created incident: the person's severity stands against the classifier (reason
    `manual`). Its `created` timeline row says who; if the pipeline changed the severity in between,
    it goes back, with a timeline row."""

    def apply(session: Session, incident: Incident, now: datetime) -> list[dict[str, Any]]:
        if (incident.severity_reason or {}).get("decided_by") in HUMAN_DECIDERS:
            return []
        incident.severity_reason = manual_reason(incident, actor)
        if incident.severity == severity:
            return []
        change = _record(session, incident, actor, "severity_changed", "severity", incident.severity, severity,
                         {"severity_reason": incident.severity_reason})
        incident.severity = severity
        for name, value in sla.deadline_fields(severity, incident.created_at).items():
            setattr(incident, name, value)
        incident.updated_at = now
        return [change]

    _change(incident_id, actor, apply, "incident_updated")


def patch(incident_id: str, actor: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Assign, change severity/status/tags/team/title/description. Status goes through the state machine."""

    def apply(session: Session, incident: Incident, now: datetime) -> list[dict[str, Any]]:
        changes: list[dict[str, Any]] = []
        if "status" in fields and fields["status"] != incident.status:
            changes.append(_set_status(session, incident, fields["status"], actor, now))
        elif "status" in fields:
            check_transition(incident.id, incident.status, fields["status"])  # repeating a state is a 409
        for name, kind in (("assignee", "assigned"), ("team", "team_changed"), ("title", "updated"),
                           ("description", "updated")):
            if name in fields and fields[name] != getattr(incident, name):
                changes.append(_record(session, incident, actor, kind, name, getattr(incident, name), fields[name]))
                setattr(incident, name, fields[name])
        if "severity" in fields and fields["severity"] != incident.severity:
            incident.severity_reason = manual_reason(incident, actor)
            changes.append(_record(session, incident, actor, "severity_changed", "severity",
                                   incident.severity, fields["severity"],
                                   {"severity_reason": incident.severity_reason}))
            incident.severity = fields["severity"]
            due = sla.deadline_fields(incident.severity, incident.created_at, get_settings().sla)
            for name, value in due.items():
                setattr(incident, name, value)
        if "tags" in fields and fields["tags"] != incident.tags:
            changes.append(_record(session, incident, actor, "tags_changed", "tags",
                                   json.dumps(incident.tags, sort_keys=True),
                                   json.dumps(fields["tags"], sort_keys=True)))
            incident.tags = dict(fields["tags"])
        if changes:
            incident.updated_at = now
        return changes

    return _change(incident_id, actor, apply, "incident_updated")


# ------------------------------------------------------------------ by dedup key (Alertmanager, PagerDuty)

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
                Incident.status.in_(ACTIVE_STATUS_NAMES),
            )
        ).first()


def resolve_by_dedup_key(source: str, dedup_key: str, actor: str, notes: str | None = None) -> str | None:
    """Resolve the active incident of `dedup_key`; its id, or None when none is open."""
    incident_id = find_active_incident(source, dedup_key)
    if incident_id is None:
        return None
    try:
        resolve(incident_id, resolved_by=actor, method="Automatic", notes=notes)
    except IllegalTransition:
        return None  # resolved by someone else in between: the goal holds
    return incident_id


def acknowledge_by_dedup_key(source: str, dedup_key: str, actor: str) -> str | None:
    """Acknowledge the active incident of `dedup_key` (already acknowledged is fine); its id or None."""
    incident_id = find_active_incident(source, dedup_key)
    if incident_id is None:
        return None
    try:
        acknowledge(incident_id, actor)
    except IllegalTransition:
        pass  # already acknowledged (or moved on): PagerDuty treats a repeat as success
    return incident_id


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
        result = resolve(incident_id, resolved_by=actor, method="Manual", notes=notes, root_cause=root_cause)
    elif status == "ACKNOWLEDGED":
        fields.pop("status")
        result = acknowledge(incident_id, actor)
    if fields:
        result = patch(incident_id, actor, fields)
    if result is None:
        result = get_incident(incident_id)
    return result
