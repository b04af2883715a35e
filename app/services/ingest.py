"""Durable ingest: the one path every door (REST, gRPC, WebSocket, Alertmanager, PagerDuty) uses.

`plan_ingest` turns a batch into the rows to write (pure); the writer of the configured database
(app/adapters/ingest_writers.py) writes them in one transaction: duplicates by (source, event_id)
are answered from the stored event, new events get their final incident id (the active incident
with the same fingerprint, or a newly allocated one; the database's partial unique index settles
races), events, incidents, timeline and one outbox row are written. Only after commit is the
pipeline told, so `accepted` always means durable. docs/foundation.md, "Ingest".
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Collection, Iterable, Mapping, NamedTuple, Sequence

from app import metrics
from app.adapters.db import retry_on_conflict
from app.adapters.ingest_writers import writer_for, writes_merge_only_drafts
from app.config import IntegrationSettings, Settings, get_settings
from app.domain import sla
from app.domain.fingerprint import fingerprint as compute_fingerprint
from app.domain.ids import utc_day
from app.domain.incident import Status
from app.domain.ingest import (
    MERGE_COLUMNS,
    PIPELINE_OUTBOX_KIND,
    PUBLISHED_FIELDS,
    EventKey,
    IncidentDraft,
    IngestPlan,
    IngestResult,
    NewEvent,
    WriteOutcome,
    opened,
    results,
)
from app.domain.severity import PAGING_SEVERITIES, map_source_severity
from app.services import changes

__all__ = ["Dispatcher", "IngestResult", "NewEvent", "PIPELINE_OUTBOX_KIND", "PUBLISHED_FIELDS", "ingest_events",
           "plan_ingest"]

log = logging.getLogger(__name__)

# Called after commit with the outbox ids to hand to the pipeline; set by the process (web, grpc).
Dispatcher = Callable[[Sequence[int]], None]

# The timeline keeps the first event ids of a group, not all of a 1,000-event batch.
TIMELINE_EVENT_IDS = 20


def plan_ingest(events: Sequence[NewEvent], settings: Settings, now: datetime,
                stored: Mapping[EventKey, str] | None = None, open_fingerprints: Collection[str] = ()) -> IngestPlan:
    """The rows ingesting `events` at `now` writes (no I/O). Events in `stored` (stored before,
    with their incident ids) and repeats within the batch are answered as duplicates and write
    nothing; the others are grouped by fingerprint, one incident draft per fingerprint, sorted by
    fingerprint (the lock order every writer follows). A fingerprint in `open_fingerprints`
    (believed to have an active incident) gets a merge-only draft: no incident row to open, only
    the counters a merge writes (unless its events assign someone: that merge reads the previous
    assignee, which only a full draft's statement does)."""
    stored = stored or {}
    keys = tuple((ev.source, ev.event_id) for ev in events)
    fields = settings.deduplication.fingerprint_fields
    by_fp: dict[str, list[int]] = {}
    seen: set[EventKey] = set()
    for position, key in enumerate(keys):
        if key in seen or key in stored:
            continue
        seen.add(key)
        fp = compute_fingerprint(events[position].fingerprint_input(), fields)
        group = by_fp.get(fp)
        if group is None:
            by_fp[fp] = [position]
        else:
            group.append(position)
    drafts: list[IncidentDraft] = []
    event_rows: list[dict[str, Any]] = []
    # What an incident row takes from its source and severity, worked out once per batch (a storm
    # batch holds 1,000 drafts from one or two sources).
    terms: dict[tuple[str, str | None, str | None], _Terms] = {}
    for fp in sorted(by_fp):
        positions = by_fp[fp]
        first = events[positions[0]]
        if len(positions) == 1:
            first_seen = last_seen = first.timestamp or now
        else:
            seen_at = [events[i].timestamp or now for i in positions]
            first_seen, last_seen = min(seen_at), max(seen_at)
        about = {"event_ids": [events[i].event_id for i in positions[:TIMELINE_EVENT_IDS]], "events": len(positions)}
        if fp in open_fingerprints and not first.assignee:
            merge = dict(zip(MERGE_COLUMNS, (fp, len(positions), first_seen, last_seen, now), strict=True))
            drafts.append(IncidentDraft(fp, merge, [], [_timeline(now, first.source, "event_merged", "event_count",
                                                                  None, about)], tuple(positions), merge_only=True))
            _event_rows(events, positions, fp, now, event_rows)
            continue
        term_key = (first.source, first.severity, first.severity_override)
        term = terms.get(term_key)
        if term is None:
            term = terms[term_key] = _terms(first, now, settings)
        row = _incident_row(first, fp, len(positions), first_seen, last_seen, now, term)
        on_create = [_timeline(now, first.source, "created", "status", Status.NEW.value, about)]
        if row["next_escalation_at"] is not None:
            on_create.append(_timeline(now, first.source, "auto_page", "next_escalation_at", now.isoformat(),
                                       _page_details(term.integration)))
        on_merge = [_timeline(now, first.source, "event_merged", "event_count", None, about)]
        if first.assignee:
            # On a merge the writer fills in the previous assignee, and drops the row if unchanged.
            assigned = _timeline(now, first.requested_by or first.source, "assigned", "assignee", first.assignee, {})
            on_create.append(assigned)
            on_merge.append(dict(assigned))
        drafts.append(IncidentDraft(fp, row, on_create, on_merge, tuple(positions)))
        _event_rows(events, positions, fp, now, event_rows)
    return IngestPlan(now=now, day=utc_day(now), keys=keys, incidents=drafts, events=event_rows, stored=stored)


def _event_rows(events: Sequence[NewEvent], positions: list[int], fp: str, now: datetime,
                out: list[dict[str, Any]]) -> None:
    for i in positions:
        ev = events[i]
        out.append({
            "source": ev.source, "event_id": ev.event_id, "fingerprint": fp, "event_type": ev.event_type,
            "severity": ev.severity, "title": ev.title[:500], "occurred_at": ev.timestamp, "received_at": now,
            "payload": ev.raw, "encrypted_payload": ev.encrypted_payload,
        })


class OpenFingerprints:
    """The fingerprints this process last saw with an active incident (written by an ingest that
    committed), the most recent last, at most `limit`. Ingest plans merge-only drafts for them: no
    incident row is built, sent or parsed for an event joining an incident that is open, which in
    an alert storm is nearly every event. Only a hint: an incident resolved since is caught by the
    writer (`WriteOutcome.not_open`, nothing written), and the batch is planned again in full."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: dict[str, None] = {}
        self._lock = threading.Lock()

    def __contains__(self, fingerprint: object) -> bool:
        return fingerprint in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def __iter__(self) -> Any:
        return iter(list(self._seen))

    def add(self, fingerprints: Iterable[str]) -> None:
        with self._lock:
            seen = self._seen
            for fp in fingerprints:
                seen.pop(fp, None)
                seen[fp] = None
            while len(seen) > self._limit:
                del seen[next(iter(seen))]

    def discard(self, fingerprints: Iterable[str]) -> None:
        with self._lock:
            for fp in fingerprints:
                self._seen.pop(fp, None)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()


# ~150 bytes an entry: 20,000 fingerprints (20 storms of 1,000 endpoints) hold ~3 MB per process.
OPEN_FINGERPRINTS = OpenFingerprints(20_000)


def ingest_events(
    events: Sequence[NewEvent],
    *,
    dispatcher: Dispatcher | None = None,
    settings: Settings | None = None,
    door: str = "rest",
) -> list[IngestResult]:
    """Store events durably and give each its final incident id. Results are in input order.
    A lost deadlock or serialization race is re-run (`retry_on_conflict`), never answered as an
    error; an unreachable database raises `app.adapters.db.DatabaseUnavailable` (nothing written)."""
    settings = settings or get_settings()
    started = time.perf_counter()
    write = writer_for(settings)
    now = datetime.now(timezone.utc)
    stored: dict[EventKey, str] = {}
    merging = writes_merge_only_drafts(settings)
    open_fingerprints: Collection[str] = OPEN_FINGERPRINTS if merging else ()
    # ends: each round writes, or adds new keys of this batch to `stored`, or (once) drops the hint
    while True:
        plan = plan_ingest(events, settings, now, stored, open_fingerprints)
        if plan.empty:
            outcome = WriteOutcome()
            break
        outcome = retry_on_conflict("ingest", functools.partial(write, plan, settings))
        if outcome.not_open:  # an incident believed open was resolved meanwhile: plan it in full
            OPEN_FINGERPRINTS.discard(d.fingerprint for d in plan.incidents if d.merge_only)
            open_fingerprints = ()
            continue
        if not outcome.stored_found:
            break
        stored.update(outcome.stored_found)
    if merging and outcome.incidents:
        OPEN_FINGERPRINTS.add(outcome.incidents)
    answers = results(plan, outcome)
    _hand_off(opened(plan, outcome), list(outcome.outbox_ids), dispatcher, settings)
    elapsed = time.perf_counter() - started
    for status, count in collections.Counter(r.status for r in answers).items():
        metrics.EVENTS_INGESTED.labels(door=door, status=status).inc(count)
    metrics.INGEST_DURATION.labels(door=door).observe(elapsed)
    created = sum(1 for r in answers if r.created)
    if created:
        metrics.INCIDENTS_CREATED.inc(created)
    return answers


def _hand_off(opened_incidents: list[dict[str, Any]], outbox_ids: list[int], dispatcher: Dispatcher | None,
              settings: Settings) -> None:
    """After commit: announce opened incidents, hand the outbox ids to the pipeline, log paging."""
    # One Redis round trip for both the hand-off and the announcements when the dispatcher can
    # carry them (tasks.dispatch.dispatch_pipeline can); else the change bus publishes them.
    combined = bool(opened_incidents and outbox_ids and getattr(dispatcher, "carries_announcements", False))
    if opened_incidents and not combined:
        changes.publish_many("incident_created", opened_incidents)
    if outbox_ids and dispatcher is not None:
        try:
            if combined:
                channel = changes.channel()
                dispatcher(outbox_ids, announcements=[  # type: ignore[call-arg]
                    (channel, changes.encode("incident_created", incident)) for incident in opened_incidents])
            else:
                dispatcher(outbox_ids)
        except Exception:  # the broker is down: the outbox relay will deliver it later
            log.warning("pipeline dispatch failed; outbox relay will retry", exc_info=True,
                        extra={"outbox_ids": list(outbox_ids)})
    paged = [incident["id"] for incident in opened_incidents
             if _pages(settings.integration(incident["source"]), incident["severity"])]
    if paged:
        log.info("auto-page: incidents due for paging", extra={"incident_ids": paged})


def _pages(integration: IntegrationSettings, severity: str) -> bool:
    """`routing.auto_page`: an incident this integration opens at P0/P1 is due for paging at once."""
    return integration.auto_page and severity in PAGING_SEVERITIES


def _page_details(integration: IntegrationSettings) -> dict[str, Any]:
    """The details of the auto_page timeline entry of an incident `_incident_row` marked as paged."""
    return {"escalation_policy": integration.escalation_policy, "team": integration.default_team}


def _timeline(now: datetime, actor: str, kind: str, field: str, new_value: str | None,
              details: dict[str, Any]) -> dict[str, Any]:
    return {"at": now, "actor": actor, "kind": kind, "field": field, "old_value": None, "new_value": new_value,
            "details": details}


class _Terms(NamedTuple):
    """What an incident opened at `now` takes from its first event's source and severity."""

    integration: IntegrationSettings
    severity: str
    deadlines: sla.SlaDeadlines
    next_escalation_at: datetime | None


def _terms(ev: NewEvent, now: datetime, settings: Settings) -> _Terms:
    integration = settings.integration(ev.source)
    severity = ev.severity_override or map_source_severity(ev.severity, integration.severity_mapping)
    # Auto-page: due for paging at once; the escalation sweep acts on it.
    return _Terms(integration, severity, sla.deadlines(severity, now, settings.sla),
                  now if _pages(integration, severity) else None)


def _incident_row(ev: NewEvent, fp: str, count: int, first_seen: datetime, last_seen: datetime,
                  now: datetime, terms: _Terms) -> dict[str, Any]:
    """The incident `ev` opens (every column but `id`), if no active incident has its fingerprint."""
    integration = terms.integration
    resource = dict(ev.resource) if ev.resource else None
    service = ev.service or (ev.tags.get("service") if ev.tags else None)
    if not service and resource and resource.get("type") == "service":
        service = resource.get("id")
    return {
        "title": ev.title[:500],
        "description": ev.description or "",
        "source": ev.source,
        "event_type": ev.event_type,
        "category": ev.category,
        "severity": terms.severity,
        "source_severity": ev.severity,
        "status": Status.NEW.value,
        "fingerprint": fp,
        "event_count": count,
        "first_seen": first_seen,
        "last_seen": last_seen,
        "created_at": now,
        "updated_at": now,
        "assignee": ev.assignee,
        "team": ev.team or integration.default_team,
        "escalation_policy": ev.escalation_policy or integration.escalation_policy,
        "service": service,
        "resource": resource,
        "metrics": dict(ev.metrics) if ev.metrics else None,
        "tags": {str(k): v for k, v in (ev.tags or {}).items()},
        "next_escalation_at": terms.next_escalation_at,
        "sla_acknowledge_by": terms.deadlines.acknowledge_by,
        "sla_resolve_by": terms.deadlines.resolve_by,
        "sla_acknowledge_breached": False,
        "sla_resolve_breached": False,
        "escalation_level": 0,
    }
