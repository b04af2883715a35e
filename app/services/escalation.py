"""The escalation engine: start (a policy snapshot on the incident), the beat-driven sweep, and
pause / resume / escalate-now. See docs/escalation.md.

State lives in columns, never in delayed tasks: `incidents.next_escalation_at` (when the next level
is due; NULL = nothing to do), `escalation_level` (the last level paged, 0 = none yet),
`escalation_token` (changes with every step, pause and acknowledge), and the `incident_escalations`
row (the policy snapshot, the repeat cycle, pause state). The sweep takes due incidents with
`SELECT ... FOR UPDATE SKIP LOCKED` in bounded batches, the longest overdue first, so two sweeps at
once split the work and a replayed sweep finds nothing due: a level is paged once."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping, Sequence

from sqlalchemy import Table, func, select, update
from sqlalchemy.orm import Session

from app import metrics
from app.adapters.bulk import insert_rows, update_rows
from app.adapters.db import read_session, unit_of_work
from app.adapters.escalation_models import EscalationPolicy, IncidentEscalation, Schedule, Team, User
from app.adapters.models import Incident, TimelineEntry
from app.config import get_settings
from app.domain import oncall
from app.domain.incident import Status
from app.services import changes
from app.services.deliveries import Page, delivery_rows, insert_deliveries

log = logging.getLogger(__name__)

_INCIDENTS: Table = Incident.__table__  # type: ignore[assignment]
_RUNS: Table = IncidentEscalation.__table__  # type: ignore[assignment]
_TIMELINE: Table = TimelineEntry.__table__  # type: ignore[assignment]

# Statuses in which an incident is still paged: nobody has acknowledged it.
PAGEABLE = (Status.NEW.value, Status.ESCALATED.value)
ACTOR = "escalation"


class EscalationConflict(ValueError):
    """The incident's escalation cannot do what was asked (not escalating, already paused, ...)."""

    def __init__(self, incident_id: str, message: str) -> None:
        super().__init__(f"incident {incident_id}: {message}")
        self.incident_id = incident_id


def _token() -> str:
    return uuid.uuid4().hex


def snapshot_of(policy: EscalationPolicy) -> dict[str, Any]:
    """The policy as an incident keeps it. A level without `escalate_after_secs` takes
    `escalation.default_timeout_secs` of the configuration now, so a later configuration change
    does not move an incident's escalation either."""
    default_after = get_settings().escalation.default_timeout_secs
    levels = [{**level, "escalate_after_secs": level.get("escalate_after_secs") or default_after}
              for level in policy.levels or []]
    return {"name": policy.name, "version": policy.version, "levels": levels,
            "repeat": policy.repeat, "conditions": dict(policy.conditions or {})}


def conditions_match(conditions: Mapping[str, Any], severity: str | None, category: str | None,
                     service: str | None) -> str | None:
    """None when the incident meets the policy's conditions, else why not."""
    if conditions.get("severity") and severity not in conditions["severity"]:
        return f"severity {severity} not in {conditions['severity']}"
    wanted = [c.lower() for c in conditions.get("category") or []]
    if wanted and (category or "").lower() not in wanted:
        return f"category {category} not in {conditions['category']}"
    if conditions.get("service") and service not in conditions["service"]:
        return f"service {service} not in {conditions['service']}"
    return None


# ------------------------------------------------------------------------------------ directory

@dataclass
class Directory:
    """Users, teams, schedules and policies as they are now (read once per sweep batch)."""

    users: dict[str, User] = field(default_factory=dict)
    teams: dict[str, Team] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)
    policies: dict[str, EscalationPolicy] = field(default_factory=dict)

    @classmethod
    def load(cls, session: Session) -> "Directory":
        return cls(
            users={u.name: u for u in session.scalars(select(User))},
            teams={t.name: t for t in session.scalars(select(Team))},
            schedules={s.name: s for s in session.scalars(select(Schedule))},
            policies={p.name: p for p in session.scalars(select(EscalationPolicy))},
        )

    def schedule_doc(self, name: str) -> dict[str, Any] | None:
        schedule = self.schedules.get(name)
        if schedule is None:
            return None
        return {"name": schedule.name, "time_zone": schedule.time_zone, "layers": schedule.layers or [],
                "overrides": schedule.overrides or []}

    def resolve(self, targets: Iterable[Mapping[str, Any]], at: datetime,
                seen: frozenset[str] = frozenset()) -> tuple[list[Page], list[str]]:
        """The people a level's targets page now (schedules -> who is on call), each once, and notes
        on targets that page nobody."""
        pages: list[Page] = []
        notes: list[str] = []
        for target in targets:
            kind, name = target["type"], target["id"]
            node = f"{kind}:{name}"
            if node in seen:  # stored data is checked for cycles; this guards old rows
                notes.append(f"{node}: skipped, already on this escalation path")
                continue
            if kind == "user":
                if name not in self.users:
                    notes.append(f"user {name!r} is not in the directory; paged by name")
                pages.append(Page(name, kind, name, f"user:{name}"))
            elif kind == "schedule":
                pages += self._on_call(name, kind, name, at, notes)
            elif kind == "team":
                team = self.teams.get(name)
                if team is None:
                    notes.append(f"team {name!r} not found")
                elif team.escalation_policy and team.escalation_policy in self.policies:
                    sub, sub_notes = self._policy_first_level(team.escalation_policy, at, seen | {node})
                    pages += [Page(p.recipient, kind, name, f"team:{name} -> {p.via}") for p in sub]
                    notes += sub_notes
                elif team.schedule:
                    pages += self._on_call(team.schedule, kind, name, at, notes, prefix=f"team:{name} -> ")
                elif team.members:
                    pages += [Page(m, kind, name, f"team:{name} member") for m in team.members]
                else:
                    notes.append(f"team {name!r} has no policy, schedule or members")
            elif kind == "policy":
                sub, sub_notes = self._policy_first_level(name, at, seen | {node})
                pages += [Page(p.recipient, kind, name, f"policy:{name} -> {p.via}") for p in sub]
                notes += sub_notes
        unique: dict[str, Page] = {}
        for page in pages:
            unique.setdefault(page.recipient, page)
        return list(unique.values()), notes

    def _on_call(self, schedule: str, kind: str, name: str, at: datetime, notes: list[str],
                 prefix: str = "") -> list[Page]:
        doc = self.schedule_doc(schedule)
        if doc is None:
            notes.append(f"schedule {schedule!r} not found")
            return []
        who = oncall.on_call_at(doc, at)
        if who is None:
            notes.append(f"nobody is on call on schedule {schedule!r}")
            return []
        return [Page(who.user, kind, name, f"{prefix}schedule:{schedule} on call ({who.source})")]

    def _policy_first_level(self, name: str, at: datetime, seen: frozenset[str]) -> tuple[list[Page], list[str]]:
        policy = self.policies.get(name)
        if policy is None or not policy.levels:
            return [], [f"escalation policy {name!r} not found or empty"]
        return self.resolve(policy.levels[0].get("targets") or [], at, seen | {f"policy:{name}"})


# ------------------------------------------------------------------------------------------ start

def start(session: Session, routed: Sequence[Mapping[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """Start escalation for routed incidents (in the route stage's transaction, rows already locked):
    `routed` items carry id, escalation_policy, severity, category, service, status. Each incident
    whose policy exists and whose conditions match gets the policy's snapshot and becomes due now
    (an auto-paged one already is); without a policy of its own an incident takes its team's. Each
    decision is a timeline row. Returns those rows."""
    if not get_settings().enable_escalation:
        return []
    wanted = [r for r in routed if r.get("status") in PAGEABLE and (r.get("escalation_policy") or r.get("team"))]
    team_names = sorted({r["team"] for r in wanted if not r.get("escalation_policy")})
    team_policy = {t.name: t.escalation_policy for t in session.scalars(
        select(Team).where(Team.name.in_(team_names)))} if team_names else {}
    chosen: dict[str, tuple[str, str]] = {
        r["id"]: (r["escalation_policy"], "the route stage assigned this policy")
              if r.get("escalation_policy") else (team_policy.get(r["team"]) or "", f"the policy of team {r['team']}")
        for r in wanted}
    wanted = [r for r in wanted if chosen[r["id"]][0]]
    if not wanted:
        return []
    names = sorted({chosen[r["id"]][0] for r in wanted})
    policies = {p.name: p for p in session.scalars(select(EscalationPolicy).where(EscalationPolicy.name.in_(names)))}
    snapshots: list[dict[str, Any]] = []
    timeline: list[dict[str, Any]] = []
    started: list[str] = []
    for item in wanted:
        name, why = chosen[item["id"]]
        policy = policies.get(name)
        if policy is None:
            timeline.append(_entry(item["id"], now, "escalation_not_started", None, None, {
                "reason": f"escalation policy {name!r} does not exist ({why})"}))
            continue
        why_not = conditions_match(policy.conditions or {}, item.get("severity"), item.get("category"),
                                   item.get("service"))
        if why_not:
            timeline.append(_entry(item["id"], now, "escalation_not_started", None, None, {
                "policy": policy.name, "reason": f"the policy's conditions do not match: {why_not}"}))
            continue
        snapshots.append({"incident_id": item["id"], "policy_name": policy.name, "policy_version": policy.version,
                          "snapshot": {**snapshot_of(policy), "started_because": why}, "cycle": 0,
                          "started_at": now, "updated_at": now})
        started.append(item["id"])
        timeline.append(_entry(item["id"], now, "escalation_started", "escalation_policy", policy.name, {
            "policy": policy.name, "policy_version": policy.version, "levels": len(policy.levels or []),
            "reason": why}))
    insert_rows(session, _RUNS, snapshots, conflict_key="incident_id")
    if started:  # due now, unless auto-page already made it due (at creation)
        session.execute(update(_INCIDENTS).where(_INCIDENTS.c.id.in_(started), _INCIDENTS.c.escalation_level == 0)
                        .values(next_escalation_at=func.coalesce(_INCIDENTS.c.next_escalation_at, now),
                                escalation_token=_token()))
    insert_rows(session, _TIMELINE, timeline)
    return timeline


def _entry(incident_id: str, now: datetime, kind: str, field_name: str | None, new: Any,
           details: Mapping[str, Any], old: Any = None, actor: str = ACTOR) -> dict[str, Any]:
    return {"incident_id": incident_id, "at": now, "actor": actor, "kind": kind, "field": field_name,
            "old_value": None if old is None else str(old), "new_value": None if new is None else str(new),
            "details": dict(details)}


# ------------------------------------------------------------------------------------------- fire

@dataclass
class _Due:
    id: str
    status: str
    level: int
    policy: str | None
    team: str | None
    severity: str
    category: str | None
    service: str | None


@dataclass
class StepResult:
    fired: list[tuple[str, int]] = field(default_factory=list)  # (incident, level)
    stopped: int = 0
    deliveries: int = 0


_DUE_COLUMNS = (Incident.id, Incident.status, Incident.escalation_level, Incident.escalation_policy, Incident.team,
                Incident.severity, Incident.category, Incident.service)


def _fire(session: Session, due: Sequence[_Due], now: datetime, reason: str, actor: str = ACTOR) -> StepResult:
    """Page the next level of each (locked) incident: deliveries, timeline, new level/token/due time."""
    result = StepResult()
    if not due:
        return result
    directory = Directory.load(session)
    ids = [d.id for d in due]
    runs = {r.incident_id: r for r in session.scalars(
        select(IncidentEscalation).where(IncidentEscalation.incident_id.in_(ids)).with_for_update())}
    new_runs: list[dict[str, Any]] = []
    incident_updates: list[dict[str, Any]] = []
    run_updates: list[dict[str, Any]] = []
    timeline: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    resolved: dict[tuple[Any, Any, int], tuple[list[Page], list[str]]] = {}
    for item in due:
        run = runs.get(item.id)
        if run is not None:
            snap, cycle = run.snapshot, run.cycle
        else:  # due before the route stage started it (auto-page): take the snapshot now
            name = item.policy or (directory.teams[item.team].escalation_policy
                                   if item.team in directory.teams else None)
            policy = directory.policies.get(name) if name else None
            why_not = ("no escalation policy on the incident or its team" if not name else
                       f"escalation policy {name!r} does not exist" if policy is None else
                       conditions_match(policy.conditions or {}, item.severity, item.category, item.service))
            if why_not or policy is None:
                incident_updates.append({"b_key": item.id, "escalation_level": item.level, "next_escalation_at": None,
                                         "escalation_token": None, "status": item.status})
                timeline.append(_entry(item.id, now, "escalation_not_started", "next_escalation_at", None,
                                       {"reason": why_not}, actor=actor))
                result.stopped += 1
                continue
            snap, cycle = snapshot_of(policy), 0
            new_runs.append({"incident_id": item.id, "policy_name": policy.name, "policy_version": policy.version,
                             "snapshot": snap, "cycle": 0, "started_at": now, "updated_at": now})
        levels = snap.get("levels") or []
        level = item.level + 1
        if level > len(levels):
            if cycle < int(snap.get("repeat") or 0):
                cycle, level = cycle + 1, 1
            else:
                incident_updates.append({"b_key": item.id, "escalation_level": item.level, "next_escalation_at": None,
                                         "escalation_token": None, "status": item.status})
                run_updates.append({"b_key": item.id, "cycle": cycle, "exhausted_at": now})
                timeline.append(_entry(item.id, now, "escalation_exhausted", "next_escalation_at", None, {
                    "policy": snap.get("name"), "reason": f"all {len(levels)} level(s) paged "
                    f"{cycle + 1} time(s) and nobody acknowledged"}, actor=actor))
                result.stopped += 1
                continue
        spec = levels[level - 1]
        token = _token()
        step = f"c{cycle}.l{level}"
        key = (snap.get("name"), snap.get("version"), level)
        if key not in resolved:  # incidents on the same policy level page the same people now
            resolved[key] = directory.resolve(spec.get("targets") or [], now)
        pages, notes = resolved[key]
        channels = list(spec.get("channels") or ["email"])
        if reason != "due":
            why = reason
        elif level == 1 and cycle == 0:
            why = f"escalation started ({snap.get('started_because') or 'due for paging at creation'})"
        elif level == 1:
            why = (f"repeat {cycle} of {snap.get('repeat')}: level {len(levels)} not acknowledged within "
                   f"{levels[-1]['escalate_after_secs']}s")
        else:
            why = f"level {level - 1} not acknowledged within {levels[level - 2]['escalate_after_secs']}s"
        next_at = now + timedelta(seconds=int(spec["escalate_after_secs"]))
        details = {"policy": snap.get("name"), "policy_version": snap.get("version"), "level": level,
                   "level_name": spec.get("name"), "cycle": cycle, "step": step, "reason": why,
                   "paged": [{"user": p.recipient, "via": p.via} for p in pages], "channels": channels,
                   "notes": notes, "next_escalation_at": next_at.isoformat()}
        deliveries += delivery_rows(item.id, token, step, level, pages, channels,
                                    {"policy": snap.get("name"), "level": level, "reason": why}, now)
        status = Status.ESCALATED.value if level > 1 or cycle > 0 else item.status
        if status != item.status:
            timeline.append(_entry(item.id, now, "status_changed", "status", status, {"reason": why},
                                   old=item.status, actor=actor))
        timeline.append(_entry(item.id, now, "escalated", "escalation_level", level, details, old=item.level,
                               actor=actor))
        incident_updates.append({"b_key": item.id, "escalation_level": level, "next_escalation_at": next_at,
                                 "escalation_token": token, "status": status})
        if run is not None or cycle:
            run_updates.append({"b_key": item.id, "cycle": cycle, "exhausted_at": None})
        result.fired.append((item.id, level))
    # One statement per table for the whole batch (app/adapters/bulk.py).
    insert_rows(session, _RUNS, new_runs, conflict_key="incident_id")
    update_rows(session, _RUNS, "incident_id", run_updates, constant={"updated_at": now})
    update_rows(session, _INCIDENTS, "id", incident_updates, constant={"updated_at": now})
    result.deliveries = insert_deliveries(session, deliveries)
    insert_rows(session, _TIMELINE, timeline)
    return result


def _after_commit(result: StepResult) -> None:
    for _, level in result.fired:
        metrics.ESCALATIONS_TRIGGERED.labels(level=str(level)).inc()
    if result.fired:
        changes.publish_many("incident_escalated", [{"id": i, "escalation_level": level} for i, level in result.fired])


# ------------------------------------------------------------------------------------------ sweep

@dataclass
class SweepResult:
    fired: int = 0
    stopped: int = 0
    deliveries: int = 0
    batches: int = 0
    seconds: float = 0.0


def _lock_due(session: Session, now: datetime, limit: int) -> list[_Due]:
    query = (select(*_DUE_COLUMNS).where(Incident.next_escalation_at <= now, Incident.status.in_(PAGEABLE),
                                         Incident.merged_into.is_(None))
             # Longest overdue first (the order of ix_incidents_next_escalation): in a backlog, the
             # page that waited a whole sweep interval is not also the last of the sweep. SKIP
             # LOCKED never waits on a row, so this claim cannot take part in a deadlock.
             .order_by(Incident.next_escalation_at, Incident.id).limit(limit).with_for_update(skip_locked=True))
    return [_Due(*row) for row in session.execute(query).all()]


def sweep(now: datetime | None = None, batch_size: int = 1000, time_budget_secs: float = 20.0) -> SweepResult:
    """Page every due incident's next level: batches of `batch_size` locked rows, each its own
    transaction, until nothing is due or the time budget is spent (the next beat run continues)."""
    started = time.perf_counter()
    result = SweepResult()
    if not get_settings().enable_escalation:
        return result
    fixed = now
    _clear_stopped(fixed or datetime.now(timezone.utc))
    while True:
        with unit_of_work() as session:
            now = fixed or datetime.now(timezone.utc)  # each batch pages (and records) at its own time
            due = _lock_due(session, now, batch_size)
            step = _fire(session, due, now, "due")
        _after_commit(step)
        result.batches += 1
        result.fired += len(step.fired)
        result.stopped += step.stopped
        result.deliveries += step.deliveries
        if len(due) < batch_size or time.perf_counter() - started > time_budget_secs:
            break
    result.seconds = time.perf_counter() - started
    metrics.ESCALATION_SWEEP_DURATION.observe(result.seconds)
    metrics.ESCALATION_DUE.set(due_backlog())
    if result.fired or result.stopped:
        log.info("escalation sweep", extra={"fired": result.fired, "stopped": result.stopped,
                                            "deliveries": result.deliveries, "batches": result.batches,
                                            "seconds": round(result.seconds, 3)})
    return result


def _clear_stopped(now: datetime) -> None:
    """A due time on an incident nobody pages any more (acknowledged or resolved by a path that left
    it, merged) is cleared, so the sweep's index scan stays short."""
    with unit_of_work() as session:
        table: Any = Incident.__table__
        session.execute(update(table).where(table.c.next_escalation_at <= now,
                                            (~table.c.status.in_(PAGEABLE)) | table.c.merged_into.isnot(None))
                        .values(next_escalation_at=None, escalation_token=None))


def due_backlog(now: datetime | None = None) -> int:
    """Incidents due for their next level now (what the sweep has not reached)."""
    return due_summary(now)[0]


def due_summary(now: datetime | None = None) -> tuple[int, float | None]:
    """(incidents due for their next level now, seconds the longest-waiting one is overdue or None):
    /health's escalation signal. Reads `ix_incidents_next_escalation` only."""
    now = now or datetime.now(timezone.utc)
    with read_session() as session:
        count, oldest = session.execute(select(func.count(), func.min(Incident.next_escalation_at)).where(
            Incident.next_escalation_at <= now, Incident.status.in_(PAGEABLE))).one()
    if oldest is not None and oldest.tzinfo is None:  # SQLite gives naive UTC
        oldest = oldest.replace(tzinfo=timezone.utc)
    return int(count or 0), (round((now - oldest).total_seconds(), 1) if oldest is not None else None)


# --------------------------------------------------------------------------- pause/resume/escalate

def _locked(session: Session, incident_id: str) -> tuple[Incident, IncidentEscalation | None]:
    from app.services.incidents import _resolve_merges

    incident = _resolve_merges(session, incident_id, lock=True)
    run = session.scalars(select(IncidentEscalation).where(IncidentEscalation.incident_id == incident.id)
                          .with_for_update()).first()
    return incident, run


def state(session: Session, incident: Incident, run: IncidentEscalation | None) -> dict[str, Any]:
    """The incident's escalation state as the API shows it."""
    def iso(value: datetime | None) -> str | None:
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else None

    return {
        "incident_id": incident.id, "status": incident.status, "level": incident.escalation_level,
        "next_escalation_at": iso(incident.next_escalation_at),
        "state": ("not_started" if run is None else "paused" if run.paused_at else "exhausted" if run.exhausted_at
                  else "stopped" if incident.next_escalation_at is None else "active"),
        "policy": run.snapshot if run is not None else None, "cycle": run.cycle if run is not None else 0,
        "paused_at": iso(run.paused_at) if run is not None else None,
    }


def get_state(incident_id: str) -> dict[str, Any]:
    from app.services.deliveries import deliveries_of
    from app.services.incidents import _resolve_merges

    with read_session() as session:
        incident = _resolve_merges(session, incident_id)
        run = session.get(IncidentEscalation, incident.id)
        return {**state(session, incident, run), "deliveries": deliveries_of(session, incident.id)}


def pause(incident_id: str, actor: str) -> dict[str, Any]:
    """Hold the escalation where it is; the time left to the next level is kept for resume."""
    now = datetime.now(timezone.utc)
    with unit_of_work() as session:
        incident, run = _locked(session, incident_id)
        if run is None or incident.status not in PAGEABLE:
            raise EscalationConflict(incident.id, f"no escalation to pause (status {incident.status})")
        if run.paused_at is not None:
            raise EscalationConflict(incident.id, "escalation is already paused")
        if incident.next_escalation_at is None:
            raise EscalationConflict(incident.id, "escalation has no further level to pause")
        remaining = max(0.0, (incident.next_escalation_at - now).total_seconds())
        run.paused_at, run.paused_remaining_secs, run.updated_at = now, remaining, now
        session.add(TimelineEntry(**_entry(incident.id, now, "escalation_paused", "next_escalation_at", None, {
            "remaining_secs": round(remaining, 3), "level": incident.escalation_level}, old=incident.next_escalation_at,
            actor=actor)))
        incident.next_escalation_at, incident.escalation_token, incident.updated_at = None, _token(), now
        session.flush()
        out = state(session, incident, run)
    changes.publish("incident_updated", {"id": out["incident_id"], "escalation": out})
    return out


def resume(incident_id: str, actor: str) -> dict[str, Any]:
    """Continue a paused escalation with the time that was left."""
    now = datetime.now(timezone.utc)
    with unit_of_work() as session:
        incident, run = _locked(session, incident_id)
        if run is None or run.paused_at is None:
            raise EscalationConflict(incident.id, "escalation is not paused")
        if incident.status not in PAGEABLE:
            raise EscalationConflict(incident.id, f"no escalation to resume (status {incident.status})")
        next_at = now + timedelta(seconds=run.paused_remaining_secs or 0.0)
        run.paused_at, run.paused_remaining_secs, run.updated_at = None, None, now
        incident.next_escalation_at, incident.escalation_token, incident.updated_at = next_at, _token(), now
        session.add(TimelineEntry(**_entry(incident.id, now, "escalation_resumed", "next_escalation_at", next_at, {
            "level": incident.escalation_level}, actor=actor)))
        session.flush()
        out = state(session, incident, run)
    changes.publish("incident_updated", {"id": out["incident_id"], "escalation": out})
    return out


def escalate_now(incident_id: str, actor: str) -> dict[str, Any]:
    """Page the next level at once (a paused escalation resumes with it)."""
    now = datetime.now(timezone.utc)
    with unit_of_work() as session:
        incident, run = _locked(session, incident_id)
        if incident.status not in PAGEABLE:
            raise EscalationConflict(incident.id, f"cannot escalate an incident in status {incident.status}")
        if run is not None and run.exhausted_at is not None and int(run.snapshot.get("repeat") or 0) <= run.cycle \
                and incident.escalation_level >= len(run.snapshot.get("levels") or []):
            raise EscalationConflict(incident.id, "every level of the policy has been paged")
        if run is not None and run.paused_at is not None:
            run.paused_at, run.paused_remaining_secs = None, None
        due = _Due(incident.id, incident.status, incident.escalation_level, incident.escalation_policy,
                   incident.team, incident.severity, incident.category, incident.service)
        step = _fire(session, [due], now, f"escalated by {actor}", actor=actor)
        if not step.fired:
            session.flush()
            raise EscalationConflict(incident.id, "no escalation policy applies to this incident")
        session.expire_all()
        incident = session.get(Incident, incident.id)  # type: ignore[assignment]
        out = state(session, incident, session.get(IncidentEscalation, incident.id))
    _after_commit(step)
    return out
