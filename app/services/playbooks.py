"""Playbook runs: started automatically when a new incident matches a playbook's triggers (the
route stage calls `auto_start` in its transaction) or by hand (`start_run`), executed one step per
`playbooks.advance` task on the `playbooks` queue, parked at the approval gate before a destructive
step, cancelled by a person, and swept by beat when a worker died.

Guarantees (docs/playbooks.md, "Execution"):
- A step is claimed in one transaction (run and step rows locked, run first): `pending` ->
  `running` with a lease of its timeout plus a grace. It executes after that commit, and its outcome
  is recorded in another transaction, only if the step still holds that attempt. A recorded step
  (`succeeded`, `failed`, `cancelled`) never runs again, whatever messages are replayed.
- A worker killed mid-step leaves the step `running`; when its lease runs out, beat's
  `playbooks.sweep` sends the run again and the step's next attempt runs (with the same
  `Idempotency-Key` on outbound calls, so a receiver can drop a repeat). Completed steps are skipped.
- Every run and step change writes a timeline row of the incident in the same transaction.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping, Sequence

from prometheus_client import Counter, Histogram
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from app.adapters.db import read_session, retry_on_conflict, unit_of_work
from app.adapters.models import Event, TimelineEntry
from app.adapters.playbook_models import Playbook, PlaybookRun, PlaybookStepRun
from app.config import Settings, get_settings
from app.domain.incident import IncidentNotFound
from app.domain.playbook import RUN_TERMINAL, STEP_DONE, IncidentFacts, Trigger
from app.domain.times import iso
from app.metrics import LATENCY_BUCKETS
from app.services import changes as changes_bus
from app.services import escalation_config as config
from app.services.incidents import get_incident
from app.services.playbook_schema import PlaybookSchema
from app.services.playbook_steps import StepCall, StepFailed, execute
from app.services.task_queue import TaskQueue

log = logging.getLogger(__name__)

TASK_NAME = "playbooks.advance"

RUNS_STARTED = Counter("incident_manager_playbook_runs_started_total", "Playbook runs started",
                       ["playbook", "trigger"])
RUNS_FINISHED = Counter("incident_manager_playbook_runs_total", "Playbook runs finished, by outcome",
                        ["playbook", "outcome"])
STEP_ATTEMPTS = Counter("incident_manager_playbook_steps_total", "Playbook step attempts, by type and outcome",
                        ["type", "outcome"])
STEP_DURATION = Histogram("incident_manager_playbook_step_duration_seconds", "Time one step attempt took",
                          ["type"], buckets=LATENCY_BUCKETS)
CRASH_ATTEMPTS = 2  # a step whose worker died this many times more than its retries allow fails


def lease_grace_secs() -> float:
    """Beyond a step's timeout, how long its claim lasts before the sweep gives it to another worker."""
    return float(os.environ.get("PLAYBOOK_LEASE_GRACE_SECS", "30"))


def queue_grace_secs() -> float:
    """How long a run sent to the queue may wait before the sweep sends it again."""
    return float(os.environ.get("PLAYBOOK_QUEUE_GRACE_SECS", "60"))


class RunNotFound(LookupError):
    def __init__(self, run_id: int) -> None:
        super().__init__(f"playbook run {run_id} not found")
        self.run_id = run_id


class RunConflict(ValueError):
    """The run is not in a state that allows the request (approve a run not waiting, cancel a finished one)."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


class PlaybookUnavailable(ValueError):
    """A disabled playbook cannot be started."""


# ------------------------------------------------------------------------------- the task queue

_queue: TaskQueue | None = None


def use_task_queue(queue: TaskQueue) -> None:
    """The worker's TaskQueue (tasks/playbooks.py sets it at import): the route stage, which has no
    queue argument, sends the runs it started through it. Without one the sweep sends them."""
    global _queue
    _queue = queue


def send_runs(run_ids: Iterable[int], queue: TaskQueue | None = None) -> None:
    """Send `playbooks.advance` for each run (after commit). A lost message is re-sent by the sweep."""
    target = queue or _queue
    if target is None:
        return
    for run_id in run_ids:
        target.send(TASK_NAME, [int(run_id)], {})


# ------------------------------------------------------------------------------- definitions

_configured: tuple[Any, list[dict[str, Any]]] | None = None  # (the settings' remediation mapping, its playbooks)


def configured_playbooks(settings: Settings | None = None) -> list[dict[str, Any]]:
    """The guide's `integrations.<name>.auto_remediation.actions[]`, each as a one-step playbook named
    `<integration>.<action>` that triggers on that integration's incidents its conditions match.
    Built once per settings object (the route stage asks at every batch); callers must not change it."""
    global _configured
    settings = settings or get_settings()
    if _configured is not None and _configured[0] is settings.remediation:
        return _configured[1]
    found = _configured_playbooks(settings)
    _configured = (settings.remediation, found)
    return found


def _configured_playbooks(settings: Settings) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    seen: set[int] = set()
    for name, remediation in settings.remediation.items():
        if id(remediation) in seen or not remediation.enabled or name != remediation.integration:
            continue
        seen.add(id(remediation))
        for i, action in enumerate(remediation.actions):
            suffix = f"-{i + 1}" if sum(a.type == action.type for a in remediation.actions) > 1 else ""
            params = {"integration": remediation.integration, "duration_secs": action.duration_secs}
            if action.type == "rate_limit":
                params["limit_rpm"] = action.limit_rpm
            found.append(PlaybookSchema().load({
                "name": f"{remediation.integration}.{action.type}{suffix}",
                "description": f"integrations.{remediation.integration}.auto_remediation.actions[{i}]",
                "triggers": {**action.conditions, "source": [remediation.integration]},
                "steps": [{"name": action.type, "type": action.type, "retries": 2, "retry_delay_secs": 1,
                           "timeout_secs": remediation.timeout_secs,
                           "params": {k: v for k, v in params.items() if v is not None}}],
            }) | {"version": 0, "origin": "config"})
    return found


def list_playbooks() -> list[dict[str, Any]]:
    """Stored playbooks, then the configured auto-remediation ones."""
    stored: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        items, cursor = config.list_objects(config.PLAYBOOK, 500, cursor)
        stored += [{**item, "origin": "api"} for item in items]
        if cursor is None:
            break
    names = {p["name"] for p in stored}
    return stored + [p for p in configured_playbooks() if p["name"] not in names]


def _definition(session: Session, name: str) -> dict[str, Any]:
    row = session.get(Playbook, name)
    if row is not None:
        return {"name": row.name, "enabled": row.enabled, "triggers": row.triggers or {}, "steps": row.steps or [],
                "version": row.version}
    found = next((p for p in configured_playbooks() if p["name"] == name), None)
    if found is None:
        raise config.NotFound("playbook", name)
    return found


# ------------------------------------------------------------------------------- starting runs

def _timeline(session: Session, incident_id: str, actor: str, kind: str, details: Mapping[str, Any],
              now: datetime, new_value: str | None = None) -> None:
    session.add(TimelineEntry(incident_id=incident_id, at=now, actor=actor, kind=kind, field="playbook",
                              old_value=None, new_value=new_value, details=dict(details)))


def _insert_runs(session: Session, starts: Sequence[tuple[Mapping[str, Any], str]], trigger: str, actor: str,
                 now: datetime) -> list[int]:
    """Insert runs of (playbook, incident id), their step rows and their `playbook_started` timeline
    rows: one statement per table whatever the count (a storm of matching incidents starts them all
    in the route stage's transaction). Returns the run ids in the order given."""
    if not starts:
        return []
    check_at = now + timedelta(seconds=queue_grace_secs())
    ids = list(session.scalars(insert(PlaybookRun).returning(PlaybookRun.id, sort_by_parameter_order=True), [{
        "playbook": p["name"], "playbook_version": int(p.get("version") or 0),
        "definition": {"triggers": p.get("triggers") or {}, "steps": p["steps"]}, "incident_id": incident_id,
        "trigger": trigger, "actor": actor, "status": "queued", "current_step": 0, "next_check_at": check_at,
        "created_at": now, "updated_at": now} for p, incident_id in starts]))
    session.execute(insert(PlaybookStepRun), [
        {"run_id": run_id, "position": i, "name": step["name"], "type": step["type"], "status": "pending",
         "attempts": 0, "updated_at": now}
        for run_id, (p, _) in zip(ids, starts, strict=True) for i, step in enumerate(p["steps"])])
    session.execute(insert(TimelineEntry), [
        {"incident_id": incident_id, "at": now, "actor": actor, "kind": "playbook_started", "field": "playbook",
         "old_value": None, "new_value": p["name"],
         "details": {"run_id": run_id, "playbook": p["name"], "trigger": trigger,
                     "steps": [step["name"] for step in p["steps"]]}}
        for run_id, (p, incident_id) in zip(ids, starts, strict=True)])
    for p, _ in starts:
        RUNS_STARTED.labels(playbook=p["name"], trigger=trigger).inc()
    return ids


def auto_start(session: Session, incidents: Sequence[Mapping[str, Any]], now: datetime) -> list[int]:
    """In the route stage's transaction: a run of every enabled playbook whose triggers match each
    new incident (`incidents`: id, severity, category, event_type, source, title, tags). Returns
    the run ids to send after commit (`send_runs`)."""
    if not incidents:
        return []
    playbooks: list[dict[str, Any]] = [
        {"name": p.name, "triggers": p.triggers or {}, "steps": p.steps or [], "version": p.version}
        for p in session.scalars(select(Playbook).where(Playbook.enabled.is_(True)).order_by(Playbook.name))]
    names = {p["name"] for p in playbooks}
    playbooks += [p for p in configured_playbooks() if p["name"] not in names]
    playbooks = [p for p in playbooks if p["triggers"]]
    if not playbooks:
        return []
    triggers = [(p, Trigger.of(p["triggers"])) for p in playbooks]
    starts: list[tuple[Mapping[str, Any], str]] = []
    for incident in incidents:
        facts = IncidentFacts(severity=str(incident["severity"]), category=incident.get("category"),
                              event_type=incident.get("event_type"), source=str(incident["source"]),
                              title=str(incident.get("title") or ""), tags=incident.get("tags") or {})
        starts += [(p, str(incident["id"])) for p, trigger in triggers if trigger.matches(facts)]
    started = _insert_runs(session, starts, "auto", "pipeline", now)
    for run_id, (p, incident_id) in zip(started, starts, strict=True):
        log.info("playbook run started", extra={"incident_id": incident_id, "playbook": p["name"], "run_id": run_id,
                                                "trigger": "auto"})
    return started


def start_run(incident_id: str, playbook_name: str, actor: str, queue: TaskQueue | None = None) -> dict[str, Any]:
    """Run a playbook on an incident by hand (REST, CLI). NotFound / IncidentNotFound /
    PlaybookUnavailable; the run is sent to the `playbooks` queue after commit."""
    incident = get_incident(incident_id)  # follows merges; IncidentNotFound for an unknown id
    now = datetime.now(timezone.utc)

    def go() -> int:
        with unit_of_work() as session:
            playbook = _definition(session, playbook_name)
            if not playbook.get("enabled", True):
                raise PlaybookUnavailable(f"playbook {playbook_name!r} is disabled")
            [run_id] = _insert_runs(session, [(playbook, incident["id"])], "manual", actor, now)
            return run_id

    run_id = retry_on_conflict("playbook start", go)
    log.info("playbook run started", extra={"incident_id": incident["id"], "playbook": playbook_name,
                                            "run_id": run_id, "trigger": "manual", "actor": actor})
    changes_bus.publish("incident_updated", {"id": incident["id"]}, [{"field": "playbook", "new_value": playbook_name}])
    send_runs([run_id], queue)
    return get_run(run_id)


# ------------------------------------------------------------------------------- reading

def _step_dict(step: PlaybookStepRun, spec: Mapping[str, Any] | None) -> dict[str, Any]:
    return {"position": step.position, "name": step.name, "type": step.type, "status": step.status,
            "attempts": step.attempts, "destructive": bool((spec or {}).get("destructive")),
            "on_failure": (spec or {}).get("on_failure", "stop"), "output": step.output, "error": step.error,
            "approved_by": step.approved_by, "approved_at": iso(step.approved_at),
            "started_at": iso(step.started_at), "finished_at": iso(step.finished_at), "duration_ms": step.duration_ms}


def _run_dict(run: PlaybookRun, steps: Sequence[PlaybookStepRun]) -> dict[str, Any]:
    specs = (run.definition or {}).get("steps") or []
    return {"id": run.id, "playbook": run.playbook, "playbook_version": run.playbook_version,
            "incident_id": run.incident_id, "trigger": run.trigger, "actor": run.actor, "status": run.status,
            "current_step": run.current_step, "error": run.error, "created_at": iso(run.created_at),
            "started_at": iso(run.started_at), "finished_at": iso(run.finished_at), "updated_at": iso(run.updated_at),
            "cancelled_by": run.cancelled_by,
            "steps": [_step_dict(s, specs[s.position] if s.position < len(specs) else None) for s in steps]}


def get_run(run_id: int) -> dict[str, Any]:
    with read_session() as session:
        run = session.get(PlaybookRun, run_id)
        if run is None:
            raise RunNotFound(run_id)
        steps = list(session.scalars(select(PlaybookStepRun).where(PlaybookStepRun.run_id == run_id)
                                     .order_by(PlaybookStepRun.position)))
        return _run_dict(run, steps)


def runs_of_incident(incident_id: str) -> list[dict[str, Any]]:
    incident = get_incident(incident_id)
    with read_session() as session:
        ids = list(session.scalars(select(PlaybookRun.id).where(PlaybookRun.incident_id == incident["id"])
                                   .order_by(PlaybookRun.id)))
    return [get_run(i) for i in ids]


# ------------------------------------------------------------------------------- executing

@dataclass(frozen=True)
class _Claim:
    run_id: int
    position: int
    attempt: int
    incident_id: str
    playbook: str
    actor: str
    trigger: str
    spec: Mapping[str, Any]
    outputs: Mapping[str, Any]


def _lock(session: Session, run_id: int) -> tuple[PlaybookRun | None, dict[int, PlaybookStepRun]]:
    """The run, then its steps (one global order: run before steps, steps by position)."""
    run = session.scalars(select(PlaybookRun).where(PlaybookRun.id == run_id).with_for_update()).first()
    if run is None:
        return None, {}
    steps = {s.position: s for s in session.scalars(
        select(PlaybookStepRun).where(PlaybookStepRun.run_id == run_id).order_by(PlaybookStepRun.position)
        .with_for_update())}
    return run, steps


def _finish(session: Session, run: PlaybookRun, status: str, now: datetime, error: str | None = None) -> None:
    run.status, run.finished_at, run.updated_at, run.error = status, now, now, error
    run.resume_at = None
    _timeline(session, run.incident_id, f"playbook:{run.playbook}", "playbook_finished",
              {"run_id": run.id, "playbook": run.playbook, "status": status, "error": error}, now, status)
    RUNS_FINISHED.labels(playbook=run.playbook, outcome=status).inc()
    log.info("playbook run finished", extra={"incident_id": run.incident_id, "playbook": run.playbook,
                                             "run_id": run.id, "status": status, "error": (error or "")[:300]})


def _claim(run_id: int, now: datetime) -> _Claim | None:
    with unit_of_work() as session:
        run, steps = _lock(session, run_id)
        if run is None or run.status not in ("queued", "running"):
            return None
        if run.resume_at is not None and run.resume_at > now:
            run.next_check_at = run.resume_at  # a wait or a retry's backoff: the sweep comes back then
            return None
        specs = (run.definition or {}).get("steps") or []
        while run.current_step < len(specs) and steps[run.current_step].status in STEP_DONE:
            run.current_step += 1  # recorded already (a replayed message): never run twice
        if run.current_step >= len(specs):
            _finish(session, run, "succeeded", now)
            return None
        step, spec = steps[run.current_step], specs[run.current_step]
        if step.status == "running" and step.lease_until is not None and step.lease_until > now:
            return None  # another worker holds this attempt
        if step.status == "running":
            log.warning("playbook step lease ran out (worker lost?); running it again", extra={
                "run_id": run.id, "step": step.name, "attempt": step.attempts, "incident_id": run.incident_id})
            STEP_ATTEMPTS.labels(type=step.type, outcome="lost").inc()
            if step.attempts > int(spec.get("retries", 0)) + CRASH_ATTEMPTS:
                _step_failed(session, run, step, spec, "the step's worker was lost on every attempt", now)
                return None
        if spec.get("destructive") and step.approved_by is None:
            step.status, step.updated_at = "awaiting_approval", now
            run.status, run.updated_at = "awaiting_approval", now
            _timeline(session, run.incident_id, f"playbook:{run.playbook}", "playbook_awaiting_approval",
                      {"run_id": run.id, "playbook": run.playbook, "step": step.name, "type": step.type}, now,
                      step.name)
            log.info("playbook run waits for approval", extra={"run_id": run.id, "step": step.name,
                                                               "incident_id": run.incident_id})
            return None
        step.status, step.attempts, step.updated_at = "running", step.attempts + 1, now
        step.started_at = step.started_at or now
        step.lease_until = now + timedelta(seconds=float(spec.get("timeout_secs", 30)) + lease_grace_secs())
        run.status, run.resume_at, run.updated_at = "running", None, now
        run.started_at = run.started_at or now
        run.next_check_at = step.lease_until
        outputs = {s.name: s.output for s in steps.values() if s.status == "succeeded"}
        return _Claim(run.id, step.position, step.attempts, run.incident_id, run.playbook, run.actor, run.trigger,
                      spec, outputs)


def _event_of(incident_id: str) -> dict[str, Any]:
    with read_session() as session:
        event = session.scalars(select(Event).where(Event.incident_id == incident_id)
                                .order_by(Event.id).limit(1)).first()
        if event is None:
            return {}
        return {"event_id": event.event_id, "source": event.source, "event_type": event.event_type,
                "severity": event.severity, "title": event.title}


def _run_step(claim: _Claim, queue: TaskQueue | None) -> tuple[dict[str, Any] | None, StepFailed | None, float]:
    started = time.perf_counter()
    try:
        incident = get_incident(claim.incident_id)
    except IncidentNotFound:
        return None, StepFailed(f"incident {claim.incident_id} no longer exists", retryable=False), 0.0
    context = {"incident": incident, "event": _event_of(incident["id"]), "steps": dict(claim.outputs),
               "run": {"id": claim.run_id, "playbook": claim.playbook, "trigger": claim.trigger, "actor": claim.actor}}
    call = StepCall(claim.run_id, claim.position, claim.playbook, str(claim.spec["name"]), str(claim.spec["type"]),
                    claim.spec.get("params") or {}, float(claim.spec.get("timeout_secs", 30)), context, queue)
    try:
        output = execute(call)
        error = None
    except StepFailed as exc:
        output, error = None, exc
    except Exception as exc:  # a bug or an unexpected error of a dependency: the step fails, the run decides
        log.exception("playbook step raised", extra={"run_id": claim.run_id, "step": claim.spec["name"]})
        output, error = None, StepFailed(f"{type(exc).__name__}: {exc}", retryable=True)
    elapsed = time.perf_counter() - started
    STEP_DURATION.labels(type=call.type).observe(elapsed)
    STEP_ATTEMPTS.labels(type=call.type, outcome="succeeded" if error is None else "failed").inc()
    return output, error, elapsed


def _next(session: Session, run: PlaybookRun, step: PlaybookStepRun, now: datetime) -> bool:
    """Move past `step`; True when the run should be sent again now."""
    specs = (run.definition or {}).get("steps") or []
    if run.status == "cancelled":
        return False
    run.current_step = step.position + 1
    run.updated_at = now
    if run.current_step >= len(specs):
        _finish(session, run, "succeeded", now)  # a failed step with on_failure: continue shows in its row
        return False
    if step.type == "wait" and step.status == "succeeded":
        run.resume_at = now + timedelta(seconds=float((step.output or {}).get("seconds", 0)))
        run.next_check_at = run.resume_at
        return False
    run.next_check_at = now + timedelta(seconds=queue_grace_secs())
    return True


def _step_failed(session: Session, run: PlaybookRun, step: PlaybookStepRun, spec: Mapping[str, Any], error: str,
                 now: datetime) -> bool:
    step.status, step.error, step.lease_until = "failed", error[:4000], None
    step.finished_at, step.updated_at = now, now
    _timeline(session, run.incident_id, f"playbook:{run.playbook}", "playbook_step_failed",
              {"run_id": run.id, "playbook": run.playbook, "step": step.name, "type": step.type,
               "attempts": step.attempts, "error": error[:1000], "on_failure": spec.get("on_failure", "stop")},
              now, step.name)
    if spec.get("on_failure") == "continue":
        return _next(session, run, step, now)
    if run.status != "cancelled":
        _finish(session, run, "failed", now, f"step {step.name!r} failed: {error[:1000]}")
    return False


def _record(claim: _Claim, output: dict[str, Any] | None, error: StepFailed | None, elapsed: float) -> bool:
    """Write an attempt's outcome if the step still holds it; True when the run goes on now."""
    now = datetime.now(timezone.utc)
    with unit_of_work() as session:
        run, steps = _lock(session, claim.run_id)
        step = steps.get(claim.position)
        if run is None or step is None or step.status != "running" or step.attempts != claim.attempt:
            log.warning("playbook step outcome dropped: the attempt was taken over", extra={
                "run_id": claim.run_id, "step": claim.spec["name"], "attempt": claim.attempt})
            return False
        step.duration_ms = round(elapsed * 1000, 2)
        if error is None:
            step.status, step.output, step.error = "succeeded", output, None
            step.lease_until, step.finished_at, step.updated_at = None, now, now
            _timeline(session, run.incident_id, f"playbook:{run.playbook}", "playbook_step_succeeded",
                      {"run_id": run.id, "playbook": run.playbook, "step": step.name, "type": step.type,
                       "attempts": step.attempts, "output": output}, now, step.name)
            log.info("playbook step succeeded", extra={"run_id": run.id, "step": step.name, "type": step.type,
                                                       "incident_id": run.incident_id, "attempt": step.attempts})
            return _next(session, run, step, now)
        retries = int(claim.spec.get("retries", 0))
        log.warning("playbook step failed", extra={"run_id": run.id, "step": step.name, "type": step.type,
                                                   "incident_id": run.incident_id, "attempt": step.attempts,
                                                   "retryable": error.retryable, "error": str(error)[:300]})
        if error.retryable and step.attempts <= retries and run.status != "cancelled":
            delay = float(claim.spec.get("retry_delay_secs", 1.0)) * 2 ** (step.attempts - 1)
            step.status, step.error, step.lease_until, step.updated_at = "pending", str(error)[:4000], None, now
            run.resume_at = now + timedelta(seconds=min(delay, 600.0))
            run.next_check_at, run.updated_at = run.resume_at, now
            return False
        return _step_failed(session, run, step, claim.spec, str(error), now)


def advance(run_id: int, queue: TaskQueue | None = None) -> dict[str, Any]:
    """One step of a run (the `playbooks.advance` task): claim, execute, record; then send the run
    again for its next step. Safe to call any number of times for a run."""
    now = datetime.now(timezone.utc)
    claim = retry_on_conflict("playbook claim", lambda: _claim(run_id, now))
    if claim is None:
        return {"run_id": run_id, "ran": None}
    output, error, elapsed = _run_step(claim, queue)
    go_on = retry_on_conflict("playbook record", lambda: _record(claim, output, error, elapsed))
    changes_bus.publish("incident_updated", {"id": claim.incident_id},
                        [{"field": "playbook", "new_value": claim.playbook}])
    if go_on:
        send_runs([run_id], queue)
    return {"run_id": run_id, "ran": claim.spec["name"], "ok": error is None}


# ------------------------------------------------------------------------------- approve, cancel, sweep

def approve(run_id: int, actor: str, queue: TaskQueue | None = None) -> dict[str, Any]:
    """Let the destructive step the run waits at run; RunConflict when it waits for nothing."""
    now = datetime.now(timezone.utc)

    def go() -> None:
        with unit_of_work() as session:
            run, steps = _lock(session, run_id)
            if run is None:
                raise RunNotFound(run_id)
            if run.status != "awaiting_approval":
                raise RunConflict(f"playbook run {run_id} is {run.status}, not awaiting approval", run.status)
            step = steps[run.current_step]
            step.status, step.approved_by, step.approved_at, step.updated_at = "pending", actor, now, now
            run.status, run.updated_at = "running", now
            run.next_check_at = now + timedelta(seconds=queue_grace_secs())
            _timeline(session, run.incident_id, actor, "playbook_approved",
                      {"run_id": run.id, "playbook": run.playbook, "step": step.name}, now, step.name)

    retry_on_conflict("playbook approve", go)
    log.info("playbook step approved", extra={"run_id": run_id, "actor": actor})
    send_runs([run_id], queue)
    return get_run(run_id)


def cancel(run_id: int, actor: str) -> dict[str, Any]:
    """Stop a run: steps not started are cancelled; a step running now finishes and is recorded,
    and nothing after it runs. RunConflict for a finished run."""
    now = datetime.now(timezone.utc)

    def go() -> None:
        with unit_of_work() as session:
            run, steps = _lock(session, run_id)
            if run is None:
                raise RunNotFound(run_id)
            if run.status in RUN_TERMINAL:
                raise RunConflict(f"playbook run {run_id} already {run.status}", run.status)
            for step in steps.values():
                if step.status in ("pending", "awaiting_approval"):
                    step.status, step.updated_at = "cancelled", now
            run.cancelled_by = actor
            _finish(session, run, "cancelled", now)
            run.error = None

    retry_on_conflict("playbook cancel", go)
    return get_run(run_id)


def sweep(queue: TaskQueue, limit: int = 500, now: datetime | None = None) -> int:
    """Beat: send again every open run whose `next_check_at` passed (a lost message, a dead worker's
    step, a wait or backoff that is over). Each is pushed one grace period ahead so one sweep sends it once."""
    now = now or datetime.now(timezone.utc)

    def go() -> list[int]:
        with unit_of_work() as session:
            ids = list(session.scalars(
                select(PlaybookRun.id).where(PlaybookRun.status.in_(("queued", "running")),
                                             PlaybookRun.next_check_at <= now)
                .order_by(PlaybookRun.next_check_at).limit(limit).with_for_update(skip_locked=True)))
            if ids:
                session.execute(update(PlaybookRun).where(PlaybookRun.id.in_(ids))
                                .values(next_check_at=now + timedelta(seconds=queue_grace_secs())))
            return ids

    ids = retry_on_conflict("playbook sweep", go)
    send_runs(ids, queue)
    if ids:
        log.info("playbook runs re-sent by the sweep", extra={"runs": len(ids)})
    return len(ids)

