"""Durable ingest: the one path every door (REST, gRPC, WebSocket, Alertmanager, PagerDuty) uses.

In one transaction: duplicates by (source, event_id) are answered from the stored event, new events
get their final incident id (the active incident with the same fingerprint, or a newly allocated
one; the database's partial unique index settles races), events, incidents, timeline and one outbox
row are written. Only after commit is the pipeline told, so `accepted` always means durable.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Callable, Iterator, Mapping, Sequence

import orjson
from sqlalchemy import func, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import metrics
from app.adapters.db import unit_of_work
from app.adapters.models import ACTIVE_STATUS_SQL, Event, Incident, IncidentDayCounter, OutboxMessage, TimelineEntry
from app.config import IntegrationSettings, Settings, get_settings
from app.domain import sla
from app.domain.fingerprint import fingerprint as compute_fingerprint
from app.domain.ids import format_incident_id, utc_day
from app.domain.severity import PAGING_SEVERITIES, map_source_severity
from app.services import changes

log = logging.getLogger(__name__)

PIPELINE_OUTBOX_KIND = "pipeline"
PUBLISHED_FIELDS = ("id", "title", "description", "source", "event_type", "category", "severity", "status",
                    "created_at", "updated_at", "team", "service", "tags")


@dataclass(frozen=True)
class IngestResult:
    status: str  # accepted | duplicate | rejected
    event_id: str
    incident_id: str | None = None
    created: bool = False  # this event opened a new incident
    error: dict[str, Any] | None = None


@dataclass
class NewEvent:
    """A validated event, as every door hands it to ingest."""

    source: str
    event_id: str
    title: str
    raw: Mapping[str, Any]
    event_type: str | None = None
    category: str | None = None
    description: str = ""
    severity: str | None = None
    timestamp: datetime | None = None
    resource: Mapping[str, Any] | None = None
    metrics: Mapping[str, Any] | None = None
    tags: Mapping[str, Any] = field(default_factory=dict)
    service: str | None = None
    dedup_key: str | None = None
    encrypted_payload: bytes | None = None
    # A door may force the incident's severity (e.g. a manual incident created as P2).
    severity_override: str | None = None
    team: str | None = None
    escalation_policy: str | None = None

    def fingerprint_input(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "event_type": self.event_type,
            "title": self.title,
            "resource": self.resource,
            "service": self.service,
            "tags": self.tags,
            "dedup_key": self.dedup_key,
        }


# Called after commit with the outbox ids to hand to the pipeline; set by the process (web, grpc).
Dispatcher = Callable[[Sequence[int]], None]


_known_sequences: set[str] = set()


def _allocate_incident_numbers(session: Session, day: date, count: int) -> list[int]:
    """`count` fresh per-day sequence numbers. Postgres: one SEQUENCE per UTC day (no row lock
    held for the transaction); SQLite: a counter row (writers are serialised there anyway)."""
    if count == 0:
        return []
    if session.get_bind().dialect.name == "postgresql":
        seq = f"incident_seq_{day:%Y%m%d}"
        if seq not in _known_sequences:
            _create_day_sequence(seq)
            _known_sequences.add(seq)
        rows = session.execute(
            text(f"SELECT nextval('{seq}') FROM generate_series(1, :n)"), {"n": count}
        ).scalars().all()
        return [int(r) for r in rows]
    upsert = sqlite.insert(IncidentDayCounter).values(day=day, last=count)
    stmt = upsert.on_conflict_do_update(
        index_elements=["day"], set_={"last": IncidentDayCounter.last + count}
    ).returning(IncidentDayCounter.last)
    last = int(session.execute(stmt).scalar_one())
    return list(range(last - count + 1, last + 1))


def _create_day_sequence(name: str) -> None:
    """Create the day's sequence in its own committed transaction (DDL, once a day)."""
    from sqlalchemy.exc import DBAPIError

    from app.adapters.db import get_engine

    try:
        with get_engine().begin() as conn:
            conn.execute(text(f"CREATE SEQUENCE IF NOT EXISTS {name} START 1"))
    except (IntegrityError, DBAPIError) as exc:
        # Two first-incidents-of-the-day racing: the loser sees a duplicate catalog row; fine.
        if "already exists" not in str(exc) and "duplicate key" not in str(exc):
            raise


def _insert_for(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _split_repeats(events: Sequence[NewEvent]) -> tuple[dict[tuple[str, str], int], dict[int, int]]:
    """(first position of each (source, event_id), position of each repeat -> its first position)."""
    first_index: dict[tuple[str, str], int] = {}
    repeat_of: dict[int, int] = {}
    for i, ev in enumerate(events):
        key = (ev.source, ev.event_id)
        if key in first_index:
            repeat_of[i] = first_index[key]
        else:
            first_index[key] = i
    return first_index, repeat_of


class DuplicateRace(Exception):
    """A concurrent transaction stored one of our (source, event_id) first; retry sees it."""


def ingest_events(
    events: Sequence[NewEvent],
    *,
    dispatcher: Dispatcher | None = None,
    settings: Settings | None = None,
    door: str = "rest",
) -> list[IngestResult]:
    """Store events durably and give each its final incident id. Results are in input order."""
    settings = settings or get_settings()
    started = time.perf_counter()
    fast = _ingest_postgres_one_statement(events, settings) if not settings.is_sqlite else None
    for attempt in range(0 if fast is not None else 3):
        try:
            with unit_of_work() as session:
                results, outbox_ids, opened = _ingest_in_transaction(session, events, settings)
            break
        except DuplicateRace:
            if attempt == 2:
                raise
            continue
        except IntegrityError as exc:
            # The active-fingerprint index lost a race against a resolve/insert elsewhere: retry.
            if attempt == 2:
                raise
            log.info("ingest retry after integrity race", extra={"error": str(exc.orig)[:200]})
            continue
    if fast is not None:
        results, outbox_ids, opened = fast
    # One Redis round trip for both the hand-off and the announcements when the dispatcher can
    # carry them (tasks.dispatch.dispatch_pipeline can); else the change bus publishes them.
    combined = bool(opened and outbox_ids and getattr(dispatcher, "carries_announcements", False))
    if opened and not combined:
        changes.publish_many("incident_created", opened)
    if outbox_ids and dispatcher is not None:
        try:
            if combined:
                channel = changes.channel()
                dispatcher(outbox_ids, announcements=[  # type: ignore[call-arg]
                    (channel, changes.encode("incident_created", incident)) for incident in opened])
            else:
                dispatcher(outbox_ids)
        except Exception:  # the broker is down: the outbox relay will deliver it later
            log.warning("pipeline dispatch failed; outbox relay will retry", exc_info=True,
                        extra={"outbox_ids": list(outbox_ids)})
    paged = [incident["id"] for incident in opened
             if _pages(settings.integration(incident["source"]), incident["severity"])]
    if paged:
        log.info("auto-page: incidents due for paging", extra={"incident_ids": paged})
    elapsed = time.perf_counter() - started
    for status, count in collections.Counter(r.status for r in results).items():
        metrics.EVENTS_INGESTED.labels(door=door, status=status).inc(count)
    metrics.INGEST_DURATION.labels(door=door).observe(elapsed)
    created = sum(1 for r in results if r.created)
    if created:
        metrics.INCIDENTS_CREATED.inc(created)
    return results


def _ingest_in_transaction(
    session: Session, events: Sequence[NewEvent], settings: Settings
) -> tuple[list[IngestResult], list[int], list[dict[str, Any]]]:
    now = datetime.now(timezone.utc)
    results: list[IngestResult | None] = [None] * len(events)

    # 1. Repeats inside this request, and repeats of stored events.
    first_index, repeat_of = _split_repeats(events)
    stored: dict[tuple[str, str], str] = {}
    keys = list(first_index)
    for chunk_start in range(0, len(keys), 500):
        chunk = keys[chunk_start:chunk_start + 500]
        rows = session.execute(
            select(Event.source, Event.event_id, Event.incident_id).where(
                tuple_(Event.source, Event.event_id).in_(chunk)
            )
        ).all()
        stored.update({(r.source, r.event_id): r.incident_id for r in rows})

    fresh = [i for key, i in first_index.items() if key not in stored]
    for key, i in first_index.items():
        if key in stored:
            results[i] = IngestResult("duplicate", events[i].event_id, stored[key])

    # 2. One incident row per fingerprint among the fresh events (multi-row upsert).
    fields = settings.deduplication.fingerprint_fields
    by_fp: dict[str, list[int]] = {}
    fp_of: dict[int, str] = {}
    for i in fresh:
        fp = compute_fingerprint(events[i].fingerprint_input(), fields)
        fp_of[i] = fp
        by_fp.setdefault(fp, []).append(i)

    incident_of_fp: dict[str, str] = {}
    created_fps: set[str] = set()
    opened: list[dict[str, Any]] = []
    outbox_ids: list[int] = []
    if by_fp:
        day = utc_day(now)
        numbers = _allocate_incident_numbers(session, day, len(by_fp))
        insert = _insert_for(session)
        incident_rows: list[dict[str, Any]] = []
        allocated: dict[str, str] = {}
        for (fp, idxs), number in zip(by_fp.items(), numbers, strict=True):
            seen = [events[i].timestamp or now for i in idxs]
            incident_id = format_incident_id(day, number)
            allocated[fp] = incident_id
            incident_rows.append(_incident_row(events[idxs[0]], incident_id, fp, len(idxs), min(seen), max(seen),
                                               now, settings))
        stmt = insert(Incident).values(incident_rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=[Incident.fingerprint],
            index_where=text(ACTIVE_STATUS_SQL),
            set_={
                "event_count": Incident.event_count + stmt.excluded.event_count,
                "last_seen": func.max(Incident.last_seen, stmt.excluded.last_seen)
                if session.get_bind().dialect.name == "sqlite"
                else func.greatest(Incident.last_seen, stmt.excluded.last_seen),
                "updated_at": stmt.excluded.updated_at,
            },
        ).returning(Incident.id, Incident.fingerprint)
        row_of_id = {r["id"]: r for r in incident_rows}
        for row in session.execute(stmt).all():
            incident_of_fp[row.fingerprint] = row.id
            if row.id == allocated[row.fingerprint]:
                created_fps.add(row.fingerprint)
                opened.append({k: row_of_id[row.id][k] for k in PUBLISHED_FIELDS})

        # 3. The events, each pointing at its final incident.
        event_rows = []
        for i in fresh:
            ev = events[i]
            event_rows.append({
                "source": ev.source,
                "event_id": ev.event_id,
                "incident_id": incident_of_fp[fp_of[i]],
                "fingerprint": fp_of[i],
                "event_type": ev.event_type,
                "severity": ev.severity,
                "title": ev.title[:500],
                "occurred_at": ev.timestamp,
                "received_at": now,
                "payload": dict(ev.raw),
                "encrypted_payload": ev.encrypted_payload,
            })
        ev_stmt = insert(Event).values(event_rows).on_conflict_do_nothing(
            index_elements=[Event.source, Event.event_id]
        ).returning(Event.id)
        event_db_ids = [r[0] for r in session.execute(ev_stmt).all()]
        if len(event_db_ids) != len(event_rows):
            raise DuplicateRace()

        # 4. Timeline: one row per incident touched (created, or n events merged into it).
        timeline = []
        for fp, idxs in by_fp.items():
            incident_id = incident_of_fp[fp]
            if fp in created_fps:
                timeline.append({
                    "incident_id": incident_id, "at": now, "actor": events[idxs[0]].source, "kind": "created",
                    "field": "status", "old_value": None, "new_value": "NEW",
                    "details": {"event_ids": [events[i].event_id for i in idxs[:20]], "events": len(idxs)},
                })
                if row_of_id[incident_id]["next_escalation_at"] is not None:
                    timeline.append({
                        "incident_id": incident_id, "at": now, "actor": events[idxs[0]].source, "kind": "auto_page",
                        "field": "next_escalation_at", "old_value": None, "new_value": now.isoformat(),
                        "details": _page_details(settings.integration(events[idxs[0]].source)),
                    })
            else:
                timeline.append({
                    "incident_id": incident_id, "at": now, "actor": events[idxs[0]].source, "kind": "event_merged",
                    "field": "event_count", "old_value": None, "new_value": None,
                    "details": {"event_ids": [events[i].event_id for i in idxs[:20]], "events": len(idxs)},
                })
        session.execute(insert(TimelineEntry).values(timeline))

        # 5. The outbox row the relay watches until the pipeline has done this work.
        outbox_ids.append(
            session.execute(
                insert(OutboxMessage).values(
                    kind=PIPELINE_OUTBOX_KIND, payload={"event_ids": event_db_ids}, created_at=now, attempts=0
                ).returning(OutboxMessage.id)
            ).scalar_one()
        )

    for i in fresh:
        fp = fp_of[i]
        created = fp in created_fps and by_fp[fp][0] == i
        results[i] = IngestResult("accepted", events[i].event_id, incident_of_fp[fp], created=created)
    for i, original in repeat_of.items():
        first_result = results[original]
        results[i] = IngestResult("duplicate", events[i].event_id, first_result.incident_id if first_result else None)
    return [r for r in results if r is not None], outbox_ids, opened


def _pages(integration: IntegrationSettings, severity: str) -> bool:
    """`routing.auto_page`: an incident this integration opens at P0/P1 is due for paging at once."""
    return integration.auto_page and severity in PAGING_SEVERITIES


def _page_details(integration: IntegrationSettings) -> dict[str, Any]:
    """The details of the auto_page timeline entry of an incident `_incident_row` marked as paged."""
    return {"escalation_policy": integration.escalation_policy, "team": integration.default_team}


def _incident_row(
    ev: NewEvent, incident_id: str, fp: str, count: int, first_seen: datetime, last_seen: datetime,
    now: datetime, settings: Settings,
) -> dict[str, Any]:
    integration = settings.integration(ev.source)
    severity = ev.severity_override or map_source_severity(ev.severity, integration.severity_mapping)
    deadlines = sla.deadlines(severity, now)
    resource = dict(ev.resource) if ev.resource else None
    service = ev.service or (ev.tags.get("service") if ev.tags else None)
    if not service and resource and resource.get("type") == "service":
        service = resource.get("id")
    return {
        "id": incident_id,
        "title": ev.title[:500],
        "description": ev.description or "",
        "source": ev.source,
        "event_type": ev.event_type,
        "category": ev.category,
        "severity": severity,
        "source_severity": ev.severity,
        "status": "NEW",
        "fingerprint": fp,
        "event_count": count,
        "first_seen": first_seen,
        "last_seen": last_seen,
        "created_at": now,
        "updated_at": now,
        "team": ev.team or integration.default_team,
        "escalation_policy": ev.escalation_policy or integration.escalation_policy,
        "service": service,
        "resource": resource,
        "metrics": dict(ev.metrics) if ev.metrics else None,
        "tags": {str(k): v for k, v in (ev.tags or {}).items()},
        # Auto-page: due for paging at once; the escalation sweep acts on it.
        "next_escalation_at": now if _pages(integration, severity) else None,
        "sla_acknowledge_by": deadlines.acknowledge_by,
        "sla_resolve_by": deadlines.resolve_by,
        "sla_acknowledge_breached": False,
        "sla_resolve_breached": False,
        "escalation_level": 0,
    }


# ------------------------------------------------------------------------------ Postgres fast path
#
# The general path above costs ~8 round trips (BEGIN, duplicate SELECT, nextval, four INSERTs,
# COMMIT) plus SQLAlchemy statement compilation. On Postgres the same writes fit in ONE statement
# of data-modifying CTEs, sent on an autocommit connection (so the statement is its own
# transaction: it commits as a whole or not at all) and prepared server-side by psycopg after a
# few uses. Stored duplicates are not looked up first: the events INSERT has no ON CONFLICT, so a
# repeated (source, event_id) makes the whole statement fail and the general path (which answers
# duplicates) takes over. Repeats are rare (client retries), so the common case pays one trip.

_ONE_STATEMENT_SQL = """
WITH alloc AS (
    -- LATERAL: the record is built once per row (`(f(x)).*` would call f once per column)
    SELECT r.*, j.doc->>'_actor' AS actor, j.doc->'_details' AS details, j.doc->'_page' AS page,
           nextval(%(seq)s::regclass) AS n
    FROM jsonb_array_elements(%(incidents)s::jsonb) AS j(doc),
         LATERAL jsonb_populate_record(NULL::incidents, j.doc) AS r
), inc AS (
    INSERT INTO incidents (id, title, description, source, event_type, category, severity, source_severity,
        status, fingerprint, event_count, first_seen, last_seen, created_at, updated_at, team, escalation_policy,
        service, resource, metrics, tags, sla_acknowledge_by, sla_resolve_by, sla_acknowledge_breached,
        sla_resolve_breached, escalation_level, next_escalation_at)
    SELECT 'INC-' || %(day)s || '-' || lpad(n::text, greatest(5, length(n::text)), '0'),
        title, description, source, event_type, category, severity, source_severity,
        status, fingerprint, event_count, first_seen, last_seen, created_at, updated_at, team, escalation_policy,
        service, resource, metrics, tags, sla_acknowledge_by, sla_resolve_by, sla_acknowledge_breached,
        sla_resolve_breached, escalation_level, next_escalation_at
    FROM alloc
    ON CONFLICT (fingerprint) WHERE status IN ('NEW','ACKNOWLEDGED','IN_PROGRESS','ESCALATED')
    DO UPDATE SET event_count = incidents.event_count + EXCLUDED.event_count,
                  last_seen = greatest(incidents.last_seen, EXCLUDED.last_seen),
                  updated_at = EXCLUDED.updated_at
    RETURNING id, fingerprint
), touched AS (
    SELECT inc.id, inc.fingerprint, alloc.actor, alloc.details, alloc.page,
           inc.id = 'INC-' || %(day)s || '-' || lpad(alloc.n::text, greatest(5, length(alloc.n::text)), '0')
               AS created
    FROM inc JOIN alloc ON alloc.fingerprint = inc.fingerprint
), ev AS (
    INSERT INTO events (source, event_id, incident_id, fingerprint, event_type, severity, title, occurred_at,
        received_at, payload, encrypted_payload)
    SELECT e.source, e.event_id, inc.id, e.fingerprint, e.event_type, e.severity, e.title, e.occurred_at,
        e.received_at, e.payload, e.encrypted_payload
    FROM jsonb_populate_recordset(NULL::events, %(events)s::jsonb) AS e
    JOIN inc ON inc.fingerprint = e.fingerprint
    RETURNING id
), tl AS (
    INSERT INTO incident_timeline (incident_id, at, actor, kind, field, old_value, new_value, details)
    SELECT id, %(now)s, actor, CASE WHEN created THEN 'created' ELSE 'event_merged' END,
           CASE WHEN created THEN 'status' ELSE 'event_count' END, NULL,
           CASE WHEN created THEN 'NEW' END, details
    FROM touched
    UNION ALL  -- auto-page (`_page` is present only for an incident paged at once)
    SELECT id, %(now)s, actor, 'auto_page', 'next_escalation_at', NULL, %(now_iso)s, page
    FROM touched WHERE created AND page IS NOT NULL
), ob AS (
    INSERT INTO outbox (kind, payload, created_at, attempts)
    SELECT %(kind)s, jsonb_build_object('event_ids', jsonb_agg(id ORDER BY id)), %(now)s, 0 FROM ev
    RETURNING id
)
SELECT (SELECT id FROM ob), (SELECT count(*) FROM ev),
       (SELECT jsonb_agg(jsonb_build_array(fingerprint, id, created)) FROM touched)
"""

class _FastConnections:
    """A small per-process pool of autocommit psycopg connections. Not thread-local: under
    gunicorn's gevent workers a thread-local is per greenlet, i.e. one connection per request.

    At most `database_pool_size` statements run at once per process (the same bound as the
    SQLAlchemy pool's): a gevent worker holds up to 2,000 connections, and an unbounded pool would
    open one Postgres connection per concurrent batch request until Postgres refuses more. A
    request over the bound waits for a slot (the wait is the `pool="ingest"` series of
    `incident_manager_db_connection_wait_seconds`)."""

    MAX_IDLE = 8
    SLOT_TIMEOUT = 30.0  # as SQLAlchemy's pool_timeout; then the general path (its own pool) answers

    def __init__(self) -> None:
        self._idle: list[Any] = []
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._slots: threading.BoundedSemaphore | None = None

    def _slots_for(self, settings: Settings) -> threading.BoundedSemaphore:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's sockets and waiters are not ours
                self._idle, self._pid, self._slots = [], os.getpid(), None
            if self._slots is None:  # created in the process that uses it (after gevent's patching)
                self._slots = threading.BoundedSemaphore(settings.database_pool_size)
            return self._slots

    @contextmanager
    def connection(self, settings: Settings) -> Iterator[Any | None]:
        """A connection for one statement, or None when no slot freed up within SLOT_TIMEOUT.
        A connection an error left unusable is closed, not pooled."""
        import psycopg

        slots = self._slots_for(settings)
        if not slots.acquire(blocking=False):
            started = time.perf_counter()
            got = slots.acquire(timeout=self.SLOT_TIMEOUT)
            metrics.DB_CONNECTION_WAIT.labels(pool="ingest").observe(time.perf_counter() - started)
            if not got:
                log.warning("no ingest connection slot within %.0f s; the general path answers",
                            self.SLOT_TIMEOUT, extra={"pool_size": settings.database_pool_size})
                yield None
                return
        conn = None
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                url = settings.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
                conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
            yield conn
        except psycopg.OperationalError:
            if conn is not None:
                conn.close()
            raise
        finally:
            if conn is not None:
                self._give_back(conn)
            slots.release()

    def _give_back(self, conn: Any) -> None:
        if conn.closed or conn.info.transaction_status != 0:  # 0 = IDLE
            conn.close()
            return
        with self._lock:
            if self._pid == os.getpid() and len(self._idle) < self.MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()


_fast_connections = _FastConnections()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return "\\x" + bytes(value).hex()  # bytea's hex input format
    return str(value)


def _ingest_postgres_one_statement(
    events: Sequence[NewEvent], settings: Settings
) -> tuple[list[IngestResult], list[int], list[dict[str, Any]]] | None:
    """Ingest in one autocommit statement; None when the general path must answer (a stored
    duplicate, a race, a lost connection: nothing was written by this attempt)."""
    import psycopg

    now = datetime.now(timezone.utc)
    first_index, repeat_of = _split_repeats(events)
    fields = settings.deduplication.fingerprint_fields
    by_fp: dict[str, list[int]] = {}
    fp_of: dict[int, str] = {}
    for i in first_index.values():
        fp = compute_fingerprint(events[i].fingerprint_input(), fields)
        fp_of[i] = fp
        by_fp.setdefault(fp, []).append(i)

    incident_rows = []
    for fp, idxs in by_fp.items():
        seen = [events[i].timestamp or now for i in idxs]
        row = _incident_row(events[idxs[0]], "", fp, len(idxs), min(seen), max(seen), now, settings)
        row["_actor"] = events[idxs[0]].source
        row["_details"] = {"event_ids": [events[i].event_id for i in idxs[:20]], "events": len(idxs)}
        if row["next_escalation_at"] is not None:
            row["_page"] = _page_details(settings.integration(row["source"]))
        incident_rows.append(row)
    event_rows = []
    for i in first_index.values():
        ev = events[i]
        event_rows.append({
            "source": ev.source, "event_id": ev.event_id, "fingerprint": fp_of[i], "event_type": ev.event_type,
            "severity": ev.severity, "title": ev.title[:500], "occurred_at": ev.timestamp, "received_at": now,
            "payload": ev.raw, "encrypted_payload": ev.encrypted_payload,
        })
    day = utc_day(now)
    seq = f"incident_seq_{day:%Y%m%d}"
    if seq not in _known_sequences:
        _create_day_sequence(seq)
        _known_sequences.add(seq)
    params = {
        "incidents": orjson.dumps(incident_rows, default=_json_default).decode(),
        "events": orjson.dumps(event_rows, default=_json_default).decode(),
        "seq": seq, "day": f"{day:%Y%m%d}", "now": now, "now_iso": now.isoformat(), "kind": PIPELINE_OUTBOX_KIND,
    }
    for attempt in range(2):
        try:
            with _fast_connections.connection(settings) as conn:
                if conn is None:
                    return None
                outbox_id, stored, touched = conn.execute(_ONE_STATEMENT_SQL, params).fetchone()
            break
        except (psycopg.errors.UniqueViolation, psycopg.errors.SerializationFailure):
            return None  # a stored duplicate (or a race on one): the general path answers it
        except psycopg.OperationalError:
            # A broken connection: nothing or everything of the statement committed. Re-running
            # is safe (the unique (source, event_id) turns a committed one into a duplicate).
            if attempt == 1:
                return None
    if stored != len(event_rows):
        return None  # cannot happen (every fresh event joins its incident); be safe, not sorry
    incident_of_fp: dict[str, str] = {}
    created_fps: set[str] = set()
    opened: list[dict[str, Any]] = []
    rows_by_fp = {row["fingerprint"]: row for row in incident_rows}
    for fp, incident_id, created in touched:
        incident_of_fp[fp] = incident_id
        if created:
            created_fps.add(fp)
            row = rows_by_fp[fp]
            opened.append({k: (incident_id if k == "id" else row[k]) for k in PUBLISHED_FIELDS})
    results: list[IngestResult | None] = [None] * len(events)
    for i in first_index.values():
        fp = fp_of[i]
        results[i] = IngestResult("accepted", events[i].event_id, incident_of_fp[fp],
                                  created=fp in created_fps and by_fp[fp][0] == i)
    for i, first in repeat_of.items():
        results[i] = IngestResult("duplicate", events[i].event_id, results[first].incident_id)  # type: ignore[union-attr]
    return [r for r in results if r is not None], [int(outbox_id)], opened
