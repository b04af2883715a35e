"""SLA breaches: beat's `sla.check` flags open incidents whose acknowledge or resolve deadline has
passed; acknowledge and resolve flag a late answer themselves. Each flag is set exactly once (the
UPDATE re-checks `... = false` under the row lock), with an `sla_breached` timeline entry, a change
event and `incident_manager_sla_breaches_total{target,severity}`. See docs/escalation.md."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from app import metrics
from app.adapters import bulk
from app.adapters.db import unit_of_work
from app.adapters.escalation_models import SLA_ACK_OPEN_SQL, SLA_RESOLVE_OPEN_SQL
from app.adapters.models import ACTIVE_STATUS_SQL, Incident, TimelineEntry
from app.services import changes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    name: str  # "acknowledge" | "resolve"
    flag: str
    deadline: str
    open_sql: str


TARGETS = (
    Target("acknowledge", "sla_acknowledge_breached", "sla_acknowledge_by", SLA_ACK_OPEN_SQL),
    Target("resolve", "sla_resolve_breached", "sla_resolve_by", SLA_RESOLVE_OPEN_SQL),
)


def _flag_sql(target: Target) -> str:
    # The inner SELECT repeats the partial index's predicate so the planner uses it; SKIP LOCKED lets
    # two checks (or a check and an acknowledge) run at once; the outer `= false` makes it once.
    return (
        f"UPDATE incidents SET {target.flag} = true WHERE id IN ("
        f" SELECT id FROM incidents WHERE {target.open_sql} AND {target.deadline} < :now AND {ACTIVE_STATUS_SQL}"
        f" AND merged_into IS NULL ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED)"
        f" AND {target.flag} = false RETURNING id, severity, {target.deadline}"
    )


def _entry(incident_id: str, now: datetime, target: str, deadline: datetime, severity: str, actor: str) -> dict:
    return {"incident_id": incident_id, "at": now, "actor": actor, "kind": "sla_breached",
            "field": f"sla_{target}_breached", "old_value": "False", "new_value": "True",
            "details": {"target": target, "deadline": deadline.isoformat(), "severity": severity,
                        "overdue_secs": round((now - deadline).total_seconds(), 3)}}


def check(now: datetime | None = None, limit: int = 5000) -> dict[str, int]:
    """Flag every open incident past a deadline (in batches of `limit`). Returns the count per target."""
    now = now or datetime.now(timezone.utc)
    counts: dict[str, int] = {}
    for target in TARGETS:
        counts[target.name] = 0
        while True:
            with unit_of_work() as session:
                rows = bulk.claim_rows(session, _flag_sql(target), {"now": now, "limit": limit})
                breached = [(r[0], r[1], _aware(r[2])) for r in rows]
                if breached:
                    session.execute(insert(TimelineEntry), [_entry(i, now, target.name, d, s, "sla-check")
                                                            for i, s, d in breached])
            _counted(target.name, [s for _, s, _ in breached])
            if breached:
                changes.publish_many("sla_breached", [{"id": i, "severity": s, "sla_target": target.name}
                                                      for i, s, _ in breached])
            counts[target.name] += len(breached)
            if len(breached) < limit:
                break
    if any(counts.values()):
        log.info("sla breaches flagged", extra=counts)
    return counts


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _counted(target: str, severities: list[str]) -> None:
    for severity in severities:
        metrics.SLA_BREACHES.labels(target=target, severity=severity).inc()


def flag_late_answer(session: Session, incident: Incident, now: datetime, actor: str) -> None:
    """Called by acknowledge and resolve (row locked): an answer after its deadline sets the flag the
    check has not set yet, with the same timeline entry. An incident resolved without an acknowledge
    was answered when it was resolved."""
    answered = [("acknowledge", "sla_acknowledge_breached", incident.sla_acknowledge_by,
                 incident.acknowledged_at or now)]
    if incident.resolved_at is not None:
        answered.append(("resolve", "sla_resolve_breached", incident.sla_resolve_by, incident.resolved_at))
    for target, flag, deadline, at in answered:
        if deadline is not None and at > deadline and not getattr(incident, flag):
            setattr(incident, flag, True)
            session.add(TimelineEntry(**_entry(incident.id, now, target, deadline, incident.severity, actor)))
            _counted(target, [incident.severity])  # counted before commit: the answer is rarely rolled back
