"""Route stage: decide team and escalation policy, then write every result of the batch.

Routing precedence: a team given explicitly by the event (manual incidents) > the first
`routing.rules` entry that matches (severity, category, source, service, tags) > the service
catalog's owner team > the integration's `routing.default_team`.

The stage first decides (`decide`: route, severity, SLA deadlines per incident, no database), then,
in one transaction, each new incident row is written once (classification, enrichment,
correlation group, team, processed_at), one timeline row per incident, the batch's events are
marked processed and its outbox rows done. Incidents already processed by another run are left
alone, so a redelivered or replayed batch changes nothing twice."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence, cast

from sqlalchemy import Table, select, update

from app import metrics
from app.adapters import bulk
from app.adapters.bulk import one_of
from app.adapters.db import retry_on_conflict, unit_of_work
from app.adapters.models import INCIDENT_LOCK_ORDER, Event, Incident, OutboxMessage, TimelineEntry
from app.adapters.pipeline_models import CorrelationMember
from app.config import RoutingRule, Settings, get_settings
from app.domain import sla
from app.domain.severity import HUMAN_DECIDERS
from app.services import changes, escalation, lifecycle, playbooks
from app.services.pipeline.batch import Batch, Snapshot
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


@dataclass(frozen=True)
class Decided:
    """Everything the batch decided about one new incident, before its row is written once."""

    id: str
    old_severity: str
    old_category: str | None
    status: str
    classification: Mapping[str, Any]
    enrichment: Mapping[str, Any] | None
    correlation: Mapping[str, Any]
    route: Mapping[str, Any]
    severity: str
    severity_reason: Mapping[str, Any] | None
    deadlines: sla.SlaDeadlines
    now: datetime


def decide(current: Any, snap: Snapshot, batch: Batch, settings: Settings, now: datetime) -> Decided:
    """Route one incident and gather the other stages' results for it (no database)."""
    cls = batch["classification"].get(current.id) or {}
    enrichment = batch["enrichment"].get(current.id)
    route = decide_route(snap, cls, enrichment or {}, _explicit_team(snap, settings), settings)
    severity = cls.get("severity") or current.severity
    reason = cls.get("severity_reason") or current.severity_reason
    if (current.severity_reason or {}).get("decided_by") in HUMAN_DECIDERS:  # a person decided first
        severity, reason = current.severity, current.severity_reason
    return Decided(current.id, current.severity, current.category, current.status, cls, enrichment,
                   batch["correlation"].get(current.id) or {}, route, severity, reason,
                   sla.deadlines(severity, current.created_at, settings.sla), now)


# The incident columns the route stage writes, once per incident and batch: (column, value). The
# one list the rows are made from; app/adapters/bulk.py types them from the table.
INCIDENT_COLUMNS: tuple[tuple[str, Callable[[Decided], Any]], ...] = (
    ("severity", lambda d: d.severity),
    ("category", lambda d: d.classification.get("category", d.old_category)),
    ("predicted_severity", lambda d: d.classification.get("predicted_severity")),
    ("predicted_category", lambda d: d.classification.get("predicted_category")),
    ("confidence", lambda d: d.classification.get("confidence")),
    ("model_version", lambda d: d.classification.get("model_version")),
    ("severity_reason", lambda d: d.severity_reason),
    ("enrichment", lambda d: d.enrichment),
    ("correlation_group_id", lambda d: d.correlation.get("group_id")),
    ("team", lambda d: d.route["team"]),
    ("escalation_policy", lambda d: d.route["escalation_policy"]),
    ("sla_acknowledge_by", lambda d: d.deadlines.acknowledge_by),
    ("sla_resolve_by", lambda d: d.deadlines.resolve_by),
    ("processed_at", lambda d: d.now),
    ("updated_at", lambda d: d.now),
)
_INCIDENTS = cast(Table, Incident.__table__)
_TIMELINE = cast(Table, TimelineEntry.__table__)


def incident_row(d: Decided) -> dict[str, Any]:
    return {"b_key": d.id, **{name: value(d) for name, value in INCIDENT_COLUMNS}}


def timeline_row(d: Decided) -> dict[str, Any]:
    """The `classified` timeline entry: old -> new severity and every stage's summary."""
    group, enrichment = d.correlation, d.enrichment
    return {
        "incident_id": d.id, "at": d.now, "actor": "pipeline", "kind": "classified", "field": "severity",
        "old_value": d.old_severity, "new_value": d.severity,
        "details": {
            "classification": d.classification, "severity_reason": d.severity_reason, "routing": d.route,
            "correlation": {k: group.get(k) for k in ("group_id", "root_incident_id", "score", "related_to")}
            if group else None,
            "enrichment": {"partial": enrichment.get("partial"), "errors": enrichment.get("errors"),
                           "similar": len(enrichment.get("similar_incidents") or [])}
            if enrichment is not None else None,
        },
    }


def _write_incidents(session: Any, decided: Sequence[Decided]) -> None:
    """Each incident row written once (unless another run processed it first), and its timeline
    row: one statement each (app/adapters/bulk.py: a statement per row costs 3x)."""
    bulk.update_rows(session, _INCIDENTS, "id", [incident_row(d) for d in decided], where_null=("processed_at",))
    bulk.insert_rows(session, _TIMELINE, [timeline_row(d) for d in decided])


def _explicit_team(snap: Snapshot, settings: Settings) -> bool:
    """Ingest stores `event team or integration default`; a team other than the default was given."""
    return bool(snap["team"]) and snap["team"] != settings.integration(snap["source"]).default_team


def _published(d: Decided) -> dict[str, Any]:
    """The incident change announced after commit (and handed to escalation)."""
    return {"id": d.id, "severity": d.severity, "category": d.classification.get("category", d.old_category),
            "team": d.route["team"], "status": d.status, "correlation_group_id": d.correlation.get("group_id")}


def _persist(batch: Batch, snaps: Mapping[str, Snapshot], roots: Mapping[str, str], settings: Settings,
             now: datetime) -> tuple[list[datetime], list[int], list[Decided], list[dict[str, Any]]]:
    """The route stage's one transaction, re-run whole by `retry_on_conflict`. Returns the
    received_at of the events it finished, the playbook runs it started, the incidents it decided
    and their announcements."""
    runs: list[int] = []
    with unit_of_work() as session:
        # Every incident row this transaction writes (the batch's, and the earlier roots it stamps)
        # is locked up front, in one statement, in the global order (INCIDENT_LOCK_ORDER). A root may
        # be another batch's incident: stamped later, out of order, it deadlocked two batches.
        locked = list(session.execute(
            select(Incident.id, Incident.severity, Incident.created_at, Incident.status, Incident.category,
                   Incident.severity_reason, Incident.processed_at)
            .where(one_of(Incident.id, sorted(set(snaps) | set(roots))))
            .order_by(*INCIDENT_LOCK_ORDER).with_for_update()
        ).all()) if snaps or roots else []
        # Rows another run already processed are left alone (idempotent).
        fresh = sorted((row for row in locked if row.id in snaps and row.processed_at is None), key=lambda r: r.id)
        decided = [decide(current, snaps[current.id], batch, settings, now) for current in fresh]
        if fresh:
            # The group is what the memberships say once these rows are locked (a correlate run
            # holding them commits first: app/services/pipeline/correlation.py), not the batch's
            # copy: another batch with the same incident may have grouped it.
            group_of = dict(session.execute(select(CorrelationMember.incident_id, CorrelationMember.group_id)
                                            .where(one_of(CorrelationMember.incident_id, [d.id for d in decided])))
                            .all())
            decided = [d if group_of.get(d.id) == d.correlation.get("group_id")
                       else replace(d, correlation={**d.correlation, "group_id": group_of.get(d.id)})
                       for d in decided]
        for d in decided:
            batch["routing"][d.id] = d.route
        published = [_published(d) for d in decided]
        if decided:
            _write_incidents(session, decided)
            # Escalation starts in the same transaction: the policy's snapshot, due now (docs/escalation.md).
            escalation.start(session, [{**p, "escalation_policy": d.route["escalation_policy"],
                                        "service": snaps[d.id]["service"]}
                                       for p, d in zip(published, decided, strict=True)], now)
            # Playbooks whose triggers match start in the same transaction too (docs/playbooks.md).
            runs = playbooks.auto_start(session, [{**snaps[p["id"]], **p} for p in published], now)
            # incident_created webhooks / the JIRA issue, with the final severity and category
            lifecycle.on_created(session, [{**p, "source": snaps[p["id"]]["source"],
                                            "service": snaps[p["id"]]["service"]} for p in published], now)
        if roots:  # earlier incidents that became the root of a group this batch opened (where still unset)
            bulk.update_rows(session, _INCIDENTS, "id",
                             [{"b_key": root, "correlation_group_id": group} for root, group in sorted(roots.items())],
                             where_null=("correlation_group_id",))
        finished = list(session.execute(
            update(Event).where(one_of(Event.id, batch["event_ids"]), Event.processed_at.is_(None))
            .values(processed_at=now).returning(Event.received_at)
        ).scalars()) if batch["event_ids"] else []
        if batch["outbox_ids"]:
            session.execute(update(OutboxMessage).where(one_of(OutboxMessage.id, batch["outbox_ids"]),
                                                        OutboxMessage.done_at.is_(None)).values(done_at=now))
    return finished, runs, decided, published


def route_and_persist(batch: Batch, settings: Settings | None = None) -> int:
    """Decide every new incident's route, then write the batch's results in one short transaction
    (each incident row once). Returns the number of events it finished."""
    settings = settings or get_settings()
    started = time.perf_counter()
    snaps: dict[str, Snapshot] = {s["id"]: s for s in batch["incidents"]}
    now = datetime.now(timezone.utc)
    roots = batch.get("correlation_roots") or {}
    finished, runs, decided, published = retry_on_conflict(
        "pipeline route", lambda: _persist(batch, snaps, roots, settings, now))
    playbooks.send_runs(runs)
    for received in finished:
        EVENT_TO_INCIDENT_LATENCY.observe(max(0.0, (now - received).total_seconds()))
    metrics.ALERTS_PROCESSED.inc(len(finished))
    touched = [{"id": i} for i in batch["touched"]]
    if published or touched:
        changes.publish_many("incident_updated", published + touched)
    metrics.PROCESSING_DURATION.labels(stage="route").observe(time.perf_counter() - started)
    log.info("pipeline batch done", extra={"events": len(finished), "incidents": len(decided),
                                           "outbox_ids": batch["outbox_ids"][:20]})
    return len(finished)
