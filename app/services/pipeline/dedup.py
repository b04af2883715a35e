"""Dedup stage: completes what ingest began.

Ingest already gives every event its final incident (one upsert per fingerprint; the partial unique
index on active fingerprints settles races in the database). This stage, per batch:
- follows `merged_into` so events of a merged incident count for the survivor;
- merges duplicates should two active, unmerged incidents of one fingerprint ever coexist (the
  index forbids it; a manual import or a restored backup may not): the oldest survives, the others
  get `merged_into`, their events move, counts add up;
- writes a `recurred` timeline entry when events join an incident after a quiet period longer
  than `deduplication.window_secs`;
- picks the incidents seen for the first time and hands their snapshot to the next stages.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Sequence

import orjson
from sqlalchemy import Text, cast, func, select, text, update
from sqlalchemy.orm import Session

from app import metrics
from app.adapters.bulk import one_of
from app.adapters.db import read_session, unit_of_work
from app.adapters.models import ACTIVE_STATUS_SQL, Event, Incident, OutboxMessage, TimelineEntry
from app.config import Settings, get_settings
from app.domain.incident import follow_merges
from app.domain.times import iso
from app.services.pipeline.batch import Batch, Snapshot, empty_batch
from app.services.pipeline.instruments import PIPELINE_BATCH_SIZE

log = logging.getLogger(__name__)



class BrokenEvent(RuntimeError):
    """An event points at an incident that does not exist: the batch cannot be processed."""


# The JSON columns come as text and are parsed here with orjson: the driver's stdlib parser cost
# ~27 ms of CPU for the 3,000 values of a batch opening 1,000 incidents (issue 11 profile).
SNAPSHOT_COLUMNS = (
    Incident.id, Incident.title, Incident.description, Incident.source, Incident.event_type, Incident.category,
    Incident.severity, Incident.source_severity, Incident.service, cast(Incident.resource, Text).label("resource"),
    cast(Incident.tags, Text).label("tags"), cast(Incident.metrics, Text).label("metrics"),
    Incident.team, Incident.escalation_policy, Incident.created_at, Incident.processed_at, Incident.merged_into,
    Incident.fingerprint,
)


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value


def snapshot(incident: Any) -> Snapshot:
    resource = _json(incident.resource) or {}
    tags, metrics = _json(incident.tags), _json(incident.metrics)
    return Snapshot(
        id=incident.id, title=incident.title, description=(incident.description or "")[:2000], source=incident.source,
        event_type=incident.event_type, category=incident.category, severity=incident.severity,
        source_severity=incident.source_severity, service=incident.service,
        resource_type=resource.get("type") if isinstance(resource, dict) else None,
        resource_id=str(resource["id"]) if isinstance(resource, dict) and resource.get("id") else None,
        tags={str(k): v for k, v in (tags or {}).items()}, metrics=dict(metrics or {}),
        team=incident.team, escalation_policy=incident.escalation_policy, created_at=iso(incident.created_at),
    )


def batch_event_ids(session: Session, outbox_ids: Sequence[int]) -> list[int]:
    """Event ids of the outbox rows, whether or not the rows are done (a replay finds its events)."""
    ids: list[int] = []
    for payload in session.scalars(select(OutboxMessage.payload).where(one_of(OutboxMessage.id, list(outbox_ids)))):
        ids.extend(int(i) for i in (payload or {}).get("event_ids", []))
    return sorted(set(ids))


def deduplicate(outbox_ids: Sequence[int], settings: Settings | None = None) -> Batch:
    """Run the dedup stage over the events of `outbox_ids`. Idempotent: only unprocessed events count."""
    settings = settings or get_settings()
    started = time.perf_counter()
    batch = empty_batch(outbox_ids)
    with read_session() as session:
        event_ids = batch_event_ids(session, batch["outbox_ids"])
        events = list(session.execute(
            select(Event.id, Event.incident_id, Event.fingerprint, Event.received_at)
            .where(one_of(Event.id, event_ids), Event.processed_at.is_(None))
        ).all()) if event_ids else []
        if not events:
            return batch
        incidents = {i.id: i for i in session.execute(
            select(*SNAPSHOT_COLUMNS).where(one_of(Incident.id, {e.incident_id for e in events})))}
        missing = {e.incident_id for e in events} - set(incidents)
        if missing:
            raise BrokenEvent(f"events {[e.id for e in events if e.incident_id in missing][:20]} point at "
                              f"incident(s) {sorted(missing)[:20]} that do not exist")
        survivors = _follow_merges(session, incidents)
        duplicates = _find_duplicates(session, {e.fingerprint for e in events})
        previous_seen = _previous_activity(session, [i for i in incidents.values() if i.processed_at is not None],
                                           [e.id for e in events])

    # Writes are rare (merges, recurrences); most batches need none.
    moved = {e.id: survivors[e.incident_id] for e in events if survivors[e.incident_id] != e.incident_id}
    recurred = _recurrences(events, incidents, survivors, previous_seen, settings.deduplication.window_secs)
    if moved or duplicates or recurred:
        with unit_of_work() as session:
            for loser_ids, survivor_id in duplicates:
                _merge(session, loser_ids, survivor_id)
                for event in events:
                    if event.incident_id in loser_ids:
                        moved[event.id] = survivor_id
            for survivor_id, moved_event_ids in _group(moved, events).items():
                session.execute(update(Event).where(one_of(Event.id, moved_event_ids)).values(incident_id=survivor_id))
            for row in recurred:
                exists = session.scalar(select(TimelineEntry.id).where(
                    TimelineEntry.incident_id == row["incident_id"], TimelineEntry.kind == "recurred",
                    TimelineEntry.new_value == row["new_value"]))
                if exists is None:
                    session.add(TimelineEntry(**row))

    final_of = {e.id: moved.get(e.id, survivors[e.incident_id]) for e in events}
    final_ids = set(final_of.values())
    if final_ids <= set(incidents) and not duplicates:
        rows = [incidents[i] for i in final_ids]
    else:  # merges happened: read the survivors as they are now
        with read_session() as session:
            rows = list(session.execute(select(*SNAPSHOT_COLUMNS).where(one_of(Incident.id, final_ids))))
    batch["event_ids"] = sorted(final_of)
    batch["incidents"] = [snapshot(i) for i in sorted(rows, key=lambda r: r.id) if i_new(i)]
    batch["touched"] = sorted(i.id for i in rows if not i_new(i))
    PIPELINE_BATCH_SIZE.observe(len(events))
    metrics.PROCESSING_DURATION.labels(stage="dedup").observe(time.perf_counter() - started)
    return batch


def i_new(incident: Any) -> bool:
    return incident.processed_at is None and incident.merged_into is None


def _group(moved: dict[int, str], events: Sequence[Any]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = defaultdict(list)
    for event_id, survivor in moved.items():
        grouped[survivor].append(event_id)
    return grouped


def _follow_merges(session: Session, incidents: dict[str, Any]) -> dict[str, str]:
    """incident id -> the id of the incident it ends up in (itself when not merged)."""
    def load(incident_id: str) -> Any:
        return incidents.get(incident_id) or session.get(Incident, incident_id)

    # A broken chain (a missing hop, or longer than MAX_MERGE_HOPS) leaves the event where it is.
    return {incident_id: (follow_merges(incident_id, load) or incident).id
            for incident_id, incident in incidents.items()}


def _find_duplicates(session: Session, fingerprints: set[str]) -> list[tuple[list[str], str]]:
    """[(loser ids, survivor id)] for fingerprints with more than one active unmerged incident.
    The database counts (the unique index makes duplicates rare): one row per duplicated
    fingerprint instead of one per incident of the batch."""
    active = (one_of(Incident.fingerprint, fingerprints), text(ACTIVE_STATUS_SQL), Incident.merged_into.is_(None))
    duplicated = list(session.scalars(select(Incident.fingerprint).where(*active).group_by(Incident.fingerprint)
                                      .having(func.count() > 1)))
    if not duplicated:
        return []
    rows = session.execute(
        select(Incident.id, Incident.fingerprint, Incident.created_at).where(
            one_of(Incident.fingerprint, duplicated), text(ACTIVE_STATUS_SQL), Incident.merged_into.is_(None))
    ).all()
    by_fp: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_fp[row.fingerprint].append(row)
    result = []
    for fingerprint in sorted(by_fp):  # merged in this order: the global lock order (INCIDENT_LOCK_ORDER)
        group = by_fp[fingerprint]
        if len(group) > 1:
            group.sort(key=lambda r: (r.created_at, r.id))
            result.append(([r.id for r in group[1:]], group[0].id))
    return result


def _merge(session: Session, loser_ids: list[str], survivor_id: str) -> None:
    """Merge active duplicates into the survivor: counts add up, losers are closed with merged_into."""
    now = datetime.now(timezone.utc)
    ordered = sorted([survivor_id, *loser_ids])  # one lock order for every worker
    rows = {i.id: i for i in session.scalars(select(Incident).where(one_of(Incident.id, ordered))
                                             .order_by(Incident.id).with_for_update())}
    survivor = rows[survivor_id]
    for loser_id in loser_ids:
        loser = rows[loser_id]
        if loser.merged_into:
            continue
        survivor.event_count += loser.event_count
        survivor.first_seen = min(survivor.first_seen, loser.first_seen)
        survivor.last_seen = max(survivor.last_seen, loser.last_seen)
        loser.merged_into = survivor_id
        loser.status = "CLOSED"
        loser.closed_at = now
        loser.updated_at = now
        session.execute(update(Event).where(Event.incident_id == loser_id).values(incident_id=survivor_id))
        session.add(TimelineEntry(incident_id=loser_id, at=now, actor="pipeline", kind="merged", field="merged_into",
                                  old_value=None, new_value=survivor_id, details={"reason": "duplicate fingerprint"}))
        session.add(TimelineEntry(incident_id=survivor_id, at=now, actor="pipeline", kind="merged_from",
                                  field="event_count", old_value=None, new_value=str(survivor.event_count),
                                  details={"merged": loser_id, "events": loser.event_count}))
        log.warning("merged duplicate active incident", extra={"incident_id": loser_id, "survivor": survivor_id})
    survivor.updated_at = now


def _previous_activity(session: Session, processed: Sequence[Any], batch_event_ids: list[int]) -> dict[str, datetime]:
    """Latest processed event per already-processed incident (before this batch)."""
    if not processed:
        return {}
    rows = session.execute(
        select(Event.incident_id, func.max(Event.received_at)).where(
            one_of(Event.incident_id, [i.id for i in processed]), Event.processed_at.is_not(None),
            ~one_of(Event.id, batch_event_ids))
        .group_by(Event.incident_id)
    ).all()
    return {r[0]: r[1] for r in rows if r[1] is not None}


def _recurrences(events: Sequence[Any], incidents: dict[str, Any], survivors: dict[str, str],
                 previous_seen: dict[str, datetime], window_secs: int) -> list[dict[str, Any]]:
    first_in_batch: dict[str, Any] = {}
    counts: dict[str, int] = defaultdict(int)
    for event in sorted(events, key=lambda e: e.id):
        counts[event.incident_id] += 1
        first_in_batch.setdefault(event.incident_id, event)
    rows = []
    for incident_id, event in first_in_batch.items():
        before = previous_seen.get(incident_id)
        if before is None:
            continue
        received = event.received_at
        quiet = (received - before).total_seconds()
        if quiet > window_secs:
            rows.append({
                "incident_id": survivors[incident_id], "at": datetime.now(timezone.utc), "actor": "pipeline",
                "kind": "recurred", "field": "last_seen", "old_value": before.isoformat(),
                "new_value": str(event.id),
                "details": {"quiet_secs": round(quiet, 1), "window_secs": window_secs, "events": counts[incident_id]},
            })
    return rows
