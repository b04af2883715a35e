"""Correlation reads: the related incidents of an incident, correlation groups listed and shown.
(Groups are formed by the pipeline's correlate stage, app.services.pipeline.correlation.)"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, or_, select

from app.adapters.db import read_session
from app.adapters.models import Incident
from app.adapters.pipeline_models import CorrelationGroup, CorrelationMember
from app.config import Settings, get_settings
from app.domain.incident import IncidentNotFound
from app.services.incidents import _resolve_merges, decode_cursor, encode_cursor


class GroupNotFound(LookupError):
    def __init__(self, group_id: str) -> None:
        super().__init__(f"correlation group {group_id!r} not found")
        self.group_id = group_id


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else None


def _summary(incident: Incident) -> dict[str, Any]:
    return {"id": incident.id, "title": incident.title, "status": incident.status, "severity": incident.severity,
            "source": incident.source, "event_type": incident.event_type, "service": incident.service,
            "created_at": _iso(incident.created_at)}


def group_to_dict(group: CorrelationGroup, members: list[CorrelationMember] | None = None,
                  incidents: dict[str, Incident] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": group.id, "root_incident_id": group.root_incident_id, "score": group.score, "reasons": group.reasons,
        "member_count": group.member_count, "created_at": _iso(group.created_at), "updated_at": _iso(group.updated_at),
    }
    if members is not None:
        body["members"] = [
            {"incident_id": m.incident_id, "score": m.score, "reasons": m.reasons, "added_at": _iso(m.added_at),
             "root": m.incident_id == group.root_incident_id,
             "incident": _summary(incidents[m.incident_id]) if incidents and m.incident_id in incidents else None}
            for m in members
        ]
    return body


def _members(session: Any, group_id: str) -> tuple[list[CorrelationMember], dict[str, Incident]]:
    members = list(session.scalars(select(CorrelationMember).where(CorrelationMember.group_id == group_id)
                                   .order_by(CorrelationMember.added_at, CorrelationMember.incident_id)))
    incidents = {i.id: i for i in session.scalars(select(Incident).where(
        Incident.id.in_([m.incident_id for m in members])))}
    return members, incidents


def related_incidents(incident_id: str) -> dict[str, Any]:
    """The incident's correlation group (members with scores and reasons) and its similar incidents
    found by enrichment. Follows merged_into like GET on the incident."""
    with read_session() as session:
        incident = _resolve_merges(session, incident_id)
        member = session.get(CorrelationMember, incident.id)
        group_body = None
        related: list[dict[str, Any]] = []
        if member is not None:
            group = session.get(CorrelationGroup, member.group_id)
            members, incidents = _members(session, member.group_id)
            if group is not None:
                group_body = group_to_dict(group)
                related = [
                    {**_summary(incidents[m.incident_id]), "score": m.score, "reasons": m.reasons,
                     "root": m.incident_id == group.root_incident_id}
                    for m in members if m.incident_id != incident.id and m.incident_id in incidents
                ]
        similar = list(((incident.enrichment or {}).get("similar_incidents")) or [])
        return {"incident_id": incident.id, "correlation_group": group_body, "related": related,
                "similar_incidents": similar}


def list_groups(limit: int = 50, cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first; keyset pagination on (created_at, id)."""
    query = select(CorrelationGroup)
    if cursor:
        created_at, group_id = decode_cursor(cursor)
        query = query.where(or_(CorrelationGroup.created_at < created_at,
                                and_(CorrelationGroup.created_at == created_at, CorrelationGroup.id < group_id)))
    with read_session() as session:
        rows = list(session.scalars(query.order_by(CorrelationGroup.created_at.desc(), CorrelationGroup.id.desc())
                                    .limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1].created_at, rows[limit - 1].id) if len(rows) > limit else None
    return [group_to_dict(g) for g in rows[:limit]], next_cursor


def get_group(group_id: str) -> dict[str, Any]:
    with read_session() as session:
        group = session.get(CorrelationGroup, group_id)
        if group is None:
            raise GroupNotFound(group_id)
        members, incidents = _members(session, group_id)
        return group_to_dict(group, members, incidents)


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
    scores and reasons the pipeline's correlation stage gave them (`related_incidents`); then
    incidents within ±window sharing its fingerprint, service or source (the pipeline may not have
    run yet, or grouped them), scored by the reasons they share. Raises IncidentNotFound."""
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
