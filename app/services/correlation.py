"""Correlation reads: the related incidents of an incident, correlation groups listed and shown,
and an incident's neighbours scored on demand (gRPC's AnalyzeCorrelations). Groups are formed by
the pipeline's correlate stage (app.services.pipeline.correlation); both score a pair with the one
scorer, app.services.pipeline.grouping.score_matrix (docs/pipeline.md, "Correlation")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, or_, select

from app.adapters.db import read_session
from app.adapters.models import Incident
from app.adapters.pipeline_models import CorrelationGroup, CorrelationMember
from app.config import Settings, get_settings
from app.domain.times import iso
from app.services.incidents import _resolve_merges, decode_cursor, encode_cursor
from app.services.pipeline.enrichment import Cache, catalog_entries
from app.services.pipeline.grouping import Item, make_item, score_matrix


class GroupNotFound(LookupError):
    def __init__(self, group_id: str) -> None:
        super().__init__(f"correlation group {group_id!r} not found")
        self.group_id = group_id


def _summary(incident: Incident) -> dict[str, Any]:
    return {"id": incident.id, "title": incident.title, "status": incident.status, "severity": incident.severity,
            "source": incident.source, "event_type": incident.event_type, "service": incident.service,
            "created_at": iso(incident.created_at)}


def group_to_dict(group: CorrelationGroup, members: list[CorrelationMember] | None = None,
                  incidents: dict[str, Incident] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": group.id, "root_incident_id": group.root_incident_id, "score": group.score, "reasons": group.reasons,
        "member_count": group.member_count, "created_at": iso(group.created_at), "updated_at": iso(group.updated_at),
    }
    if members is not None:
        body["members"] = [
            {"incident_id": m.incident_id, "score": m.score, "reasons": m.reasons, "added_at": iso(m.added_at),
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


def analyze_correlations(incident_id: str, time_window_secs: int = 0, limit: int = 0,
                         settings: Settings | None = None) -> Correlations:
    """The incidents related to one incident (gRPC's AnalyzeCorrelations; follows merges, raises
    IncidentNotFound), each scored against it by the pipeline's own scorer
    (`grouping.score_matrix`), so a pair scores the same here as in the correlate stage: the
    members of its correlation group first (reason `group`, with the score and reasons the stage
    stored: a root's is 1.0, `root`), then the incidents created within
    ±window that share its fingerprint, source or service (the pipeline may not have grouped them:
    not run yet, below the threshold, or a full group). Best score first, at most `limit`
    (default `correlation.max_group_size`)."""
    settings = settings or get_settings()
    config = settings.correlation
    window = time_window_secs or config.time_window_secs
    limit = limit or config.max_group_size
    with read_session() as session:
        incident = _resolve_merges(session, incident_id)
        member = session.get(CorrelationMember, incident.id)
        grouped: dict[str, Incident] = {}
        stored: dict[str, tuple[float, list[Any]]] = {}
        if member is not None:
            rows = session.execute(
                select(Incident, CorrelationMember.score, CorrelationMember.reasons)
                .join(CorrelationMember, CorrelationMember.incident_id == Incident.id)
                .where(CorrelationMember.group_id == member.group_id, Incident.id != incident.id)).all()
            grouped = {r[0].id: r[0] for r in rows}
            # A member keeps the score the pipeline gave it (a root's is 1.0, reason `root`)
            stored = {r[0].id: (float(r[1] or 0.0), list(r[2] or [])) for r in rows}
        shared = [Incident.fingerprint == incident.fingerprint, Incident.source == incident.source]
        if incident.service:
            shared.append(Incident.service == incident.service)
        nearby = list(session.scalars(
            select(Incident).where(Incident.id != incident.id, Incident.merged_into.is_(None),
                                   Incident.created_at >= incident.created_at - timedelta(seconds=window),
                                   Incident.created_at <= incident.created_at + timedelta(seconds=window), or_(*shared))
            .order_by(Incident.created_at.desc()).limit(max(limit * 4, 200))))
    others = list(grouped.values()) + [i for i in nearby if i.id not in grouped]
    catalog = catalog_entries({i.service for i in [incident, *others] if i.service},
                              Cache(settings.enrichment.cache_ttl_secs)) if config.enable_service else {}

    def item(i: Incident) -> Item:
        return make_item(i.id, i.source, i.event_type, i.service, i.tags, i.created_at, i.title, i.description,
                         catalog)

    scores = score_matrix([item(incident)], [item(i) for i in others], config)
    related = [RelatedIncident(other.id, round(stored[other.id][0], 3),
                               ("group", *(str(r.get("strategy", r)) if isinstance(r, dict) else str(r)
                                           for r in stored[other.id][1])),
                               other.title, other.severity, other.status, other.created_at)
               if other.id in stored else
               RelatedIncident(other.id, round(scores.score(0, j), 3),
                               tuple(r["strategy"] for r in scores.reasons(0, j)), other.title, other.severity,
                               other.status, other.created_at)
               for j, other in enumerate(others)]
    related.sort(key=lambda r: (r.incident_id not in grouped, -r.score, -r.created_at.timestamp()))
    return Correlations(incident.id, member.group_id if member else None, related[:limit], window,
                        datetime.now(timezone.utc))
