"""Route stage: decide team and escalation policy, then write every result of the batch.

Routing precedence: a team given explicitly by the event (manual incidents) > the first
`routing.rules` entry that matches (severity, category, source, service, tags) > the service
catalog's owner team > the integration's `routing.default_team`.

Then, in one transaction, each new incident row is written once (classification, enrichment,
correlation group, team, processed_at), one timeline row per incident, the batch's events are
marked processed and its outbox rows done. Incidents already processed by another run are left
alone, so a redelivered or replayed batch changes nothing twice."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any, Mapping, cast

from sqlalchemy import Table, bindparam, insert, select, text, update

from app import metrics
from app.adapters.db import unit_of_work
from app.adapters.models import Event, Incident, OutboxMessage, TimelineEntry
from app.config import RoutingRule, Settings, get_settings
from app.domain import sla
from app.domain.severity import HUMAN_DECIDERS
from app.services import changes, escalation
from app.services.pipeline.batch import Batch, Snapshot, one_of
from app.services.pipeline.instruments import EVENT_TO_INCIDENT_LATENCY

log = logging.getLogger(__name__)


def rule_matches(rule: RoutingRule, severity: str, category: str | None, source: str, service: str | None,
                 tags: Mapping[str, Any]) -> bool:
    if rule.severity and severity not in rule.severity:
        return False
    if rule.category and (category or "").lower() not in rule.category:
        return False
    if rule.source and source not in rule.source:
        return False
    if rule.service and service not in rule.service:
        return False
    return all(str(tags.get(k)) == v for k, v in rule.tags.items())


def decide_route(snap: Snapshot, classification: Mapping[str, Any], enrichment: Mapping[str, Any],
                 explicit_team: bool, settings: Settings) -> dict[str, Any]:
    """{team, escalation_policy, reason} for one incident."""
    severity = classification.get("severity") or snap["severity"]
    category = classification.get("category") or snap["category"]
    integration = settings.integration(snap["source"])
    if explicit_team and snap["team"]:
        return {"team": snap["team"], "escalation_policy": snap["escalation_policy"] or integration.escalation_policy,
                "reason": "explicit"}
    for rule in settings.routing_rules:
        if rule_matches(rule, severity, category, snap["source"], snap["service"], snap["tags"]):
            return {"team": rule.team or snap["team"],
                    "escalation_policy": rule.escalation_policy or snap["escalation_policy"],
                    "reason": f"rule:{rule.name}"}
    service = (enrichment or {}).get("service") or {}
    if service.get("owner_team"):
        return {"team": service["owner_team"],
                "escalation_policy": service.get("escalation_policy") or snap["escalation_policy"],
                "reason": f"service:{service.get('name')}"}
    return {"team": integration.default_team or snap["team"],
            "escalation_policy": integration.escalation_policy or snap["escalation_policy"],
            "reason": f"default:{snap['source']}" if integration.default_team else "none"}


# Postgres: one UPDATE ... FROM jsonb_to_recordset(one JSON document) for the whole batch (a
# statement per row costs 3x; arrays of JSON strings cost more in escaping than the update itself).
_RECORD_COLUMNS = (
    ("b_id", "text"), ("severity", "text"), ("category", "text"), ("predicted_severity", "text"),
    ("predicted_category", "text"), ("confidence", "float8"), ("model_version", "text"), ("enrichment", "jsonb"),
    ("severity_reason", "jsonb"),
    ("correlation_group_id", "text"), ("team", "text"), ("escalation_policy", "text"),
    ("sla_acknowledge_by", "timestamptz"), ("sla_resolve_by", "timestamptz"), ("processed_at", "timestamptz"),
    ("updated_at", "timestamptz"),
)
_TIMELINE_COLUMNS = (
    ("incident_id", "text"), ("at", "timestamptz"), ("actor", "text"), ("kind", "text"), ("field", "text"),
    ("old_value", "text"), ("new_value", "text"), ("details", "jsonb"),
)


def _recordset(columns: tuple[tuple[str, str], ...]) -> str:
    """`jsonb_to_recordset(:rows) AS v(<typed columns>)`: a whole batch of rows as one parameter."""
    return "jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(" + ", ".join(f"{n} {kind}" for n, kind in columns) + ")"


_RECORDSET_UPDATE = text(
    "UPDATE incidents AS i SET " + ", ".join(f"{name} = v.{name}" for name, _ in _RECORD_COLUMNS if name != "b_id")
    + " FROM " + _recordset(_RECORD_COLUMNS) + " WHERE i.id = v.b_id AND i.processed_at IS NULL"
)
# One INSERT ... SELECT for the batch's timeline rows (an executemany is one statement per row).
_RECORDSET_TIMELINE = text(
    "INSERT INTO incident_timeline (" + ", ".join(n for n, _ in _TIMELINE_COLUMNS) + ") SELECT "
    + ", ".join(f"v.{n}" for n, _ in _TIMELINE_COLUMNS) + " FROM " + _recordset(_TIMELINE_COLUMNS)
)


def _write_incidents(session: Any, rows: list[dict[str, Any]], timeline: list[dict[str, Any]]) -> None:
    """Each incident row written once, and its timeline row: one statement each on Postgres
    (executemany elsewhere)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_RECORDSET_UPDATE, {"rows": json.dumps(rows, default=_json_default)})
        session.execute(_RECORDSET_TIMELINE, {"rows": json.dumps(timeline, default=_json_default)})
        return
    table = cast(Table, Incident.__table__)
    session.execute(
        update(table).where(table.c.id == bindparam("b_id"), table.c.processed_at.is_(None))
        .values({k: bindparam(k) for k in rows[0] if k != "b_id"}),
        rows,
    )
    session.execute(insert(TimelineEntry), timeline)


def _json_default(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _explicit_team(snap: Snapshot, settings: Settings) -> bool:
    """Ingest stores `event team or integration default`; a team other than the default was given."""
    return bool(snap["team"]) and snap["team"] != settings.integration(snap["source"]).default_team


def route_and_persist(batch: Batch, settings: Settings | None = None) -> int:
    """Write the batch's results (each incident row once). Returns the number of events it finished."""
    settings = settings or get_settings()
    started = time.perf_counter()
    snaps: dict[str, Snapshot] = {s["id"]: s for s in batch["incidents"]}
    now = datetime.now(timezone.utc)
    published: list[dict[str, Any]] = []
    with unit_of_work() as session:
        fresh = list(session.execute(
            select(Incident.id, Incident.severity, Incident.created_at, Incident.status, Incident.category,
                   Incident.severity_reason)
            .where(one_of(Incident.id, sorted(snaps)), Incident.processed_at.is_(None))
            .order_by(Incident.id).with_for_update()
        ).all()) if snaps else []
        rows: list[dict[str, Any]] = []
        timeline: list[dict[str, Any]] = []
        for current in fresh:
            snap = snaps[current.id]
            cls = batch["classification"].get(current.id) or {}
            enrichment = batch["enrichment"].get(current.id)
            group = batch["correlation"].get(current.id) or {}
            route = decide_route(snap, cls, enrichment or {}, _explicit_team(snap, settings), settings)
            batch["routing"][current.id] = route
            severity = cls.get("severity") or current.severity
            reason = cls.get("severity_reason") or current.severity_reason
            if (current.severity_reason or {}).get("decided_by") in HUMAN_DECIDERS:  # a person decided first
                severity, reason = current.severity, current.severity_reason
            deadlines = sla.deadlines(severity, current.created_at)
            rows.append({
                "b_id": current.id, "severity": severity, "category": cls.get("category", current.category),
                "predicted_severity": cls.get("predicted_severity"),
                "predicted_category": cls.get("predicted_category"),
                "confidence": cls.get("confidence"), "model_version": cls.get("model_version"),
                "severity_reason": reason, "enrichment": enrichment, "correlation_group_id": group.get("group_id"),
                "team": route["team"], "escalation_policy": route["escalation_policy"],
                "sla_acknowledge_by": deadlines.acknowledge_by, "sla_resolve_by": deadlines.resolve_by,
                "processed_at": now, "updated_at": now,
            })
            timeline.append({
                "incident_id": current.id, "at": now, "actor": "pipeline", "kind": "classified", "field": "severity",
                "old_value": current.severity, "new_value": severity,
                "details": {
                    "classification": cls, "severity_reason": reason, "routing": route,
                    "correlation": {k: group.get(k) for k in ("group_id", "root_incident_id", "score", "related_to")}
                    if group else None,
                    "enrichment": {"partial": (enrichment or {}).get("partial"),
                                   "errors": (enrichment or {}).get("errors"),
                                   "similar": len((enrichment or {}).get("similar_incidents") or [])}
                    if enrichment is not None else None,
                },
            })
            published.append({"id": current.id, "severity": severity, "category": rows[-1]["category"],
                              "team": route["team"], "status": current.status,
                              "correlation_group_id": group.get("group_id")})
        if rows:
            _write_incidents(session, rows, timeline)
            # Escalation starts in the same transaction: the policy's snapshot, due now (docs/escalation.md).
            escalation.start(session, [{**p, "escalation_policy": r["escalation_policy"],
                                        "service": snaps[p["id"]]["service"]}
                                       for p, r in zip(published, rows, strict=True)], now)
        roots = batch.get("correlation_roots") or {}
        if roots:  # earlier incidents that became the root of a group this batch opened: one executemany
            table = cast(Table, Incident.__table__)
            session.execute(update(table)
                            .where(table.c.id == bindparam("b_root"), table.c.correlation_group_id.is_(None))
                            .values(correlation_group_id=bindparam("b_group")),
                            [{"b_root": root, "b_group": group} for root, group in sorted(roots.items())])
        finished = list(session.execute(
            update(Event).where(one_of(Event.id, batch["event_ids"]), Event.processed_at.is_(None))
            .values(processed_at=now).returning(Event.received_at)
        ).scalars()) if batch["event_ids"] else []
        if batch["outbox_ids"]:
            session.execute(update(OutboxMessage).where(one_of(OutboxMessage.id, batch["outbox_ids"]),
                                                        OutboxMessage.done_at.is_(None)).values(done_at=now))
    for received in finished:
        EVENT_TO_INCIDENT_LATENCY.observe(max(0.0, (now - received).total_seconds()))
    metrics.ALERTS_PROCESSED.inc(len(finished))
    touched = [{"id": i} for i in batch["touched"]]
    if published or touched:
        changes.publish_many("incident_updated", published + touched)
    metrics.PROCESSING_DURATION.labels(stage="route").observe(time.perf_counter() - started)
    log.info("pipeline batch done", extra={"events": len(finished), "incidents": len(rows),
                                           "outbox_ids": batch["outbox_ids"][:20]})
    return len(finished)

