"""The two writers of an ingest plan (app.domain.ingest): Postgres in one statement, SQLite (the
embedded default) in one SQLAlchemy transaction. Both take the incident rows in the plan's order
(sorted by fingerprint), answer events stored before by writing nothing and naming them
(`WriteOutcome.stored_found`), and report per fingerprint the incident id and whether it was
opened. docs/foundation.md, "Ingest", says why each choice."""

from __future__ import annotations

from datetime import date
from typing import Any, Callable

import orjson
from sqlalchemy import func, select, text, tuple_
from sqlalchemy.dialects import sqlite

from app.adapters.db import autocommit_connection, get_engine, is_outage, unit_of_work
from app.adapters.models import ACTIVE_STATUS_SQL, Event, Incident, IncidentDayCounter, OutboxMessage, TimelineEntry
from app.config import Settings
from app.domain.ids import format_incident_id, incident_id_sql
from app.domain.ingest import IngestPlan, WriteOutcome

Writer = Callable[[IngestPlan, Settings], WriteOutcome]

# ------------------------------------------------------------------------------------------ Postgres

_INCIDENT_COLUMNS = (
    "title, description, source, event_type, category, severity, source_severity, status, fingerprint, "
    "event_count, first_seen, last_seen, created_at, updated_at, assignee, team, escalation_policy, service, resource, "
    "metrics, tags, sla_acknowledge_by, sla_resolve_by, sla_acknowledge_breached, sla_resolve_breached, "
    "escalation_level, next_escalation_at")
# A merge-only draft (app.domain.ingest.MERGE_COLUMNS) leaves the other columns NULL; its row is only
# offered to ON CONFLICT, never kept (see `_TEMPLATE`), but NOT NULL is checked before the conflict
# is, so the NOT NULL columns get stand-ins. A full draft has a value in each of them.
# (braces doubled: the template goes through str.format)
_STAND_INS = {"title": "''", "description": "''", "source": "''", "severity": "'P4'", "status": "'NEW'",
              "created_at": "updated_at", "tags": "'{{}}'::jsonb", "sla_acknowledge_breached": "false",
              "sla_resolve_breached": "false", "escalation_level": "0"}
_INCIDENT_VALUES = ", ".join(f"coalesce({name}, {_STAND_INS[name]})" if name in _STAND_INS else name
                             for name in _INCIDENT_COLUMNS.split(", "))

# One statement of data-modifying CTEs on an autocommit connection: its own transaction, one round
# trip. Stored duplicates are not looked up first: the events INSERT has no ON CONFLICT, so a
# stored (source, event_id) fails the whole statement (nothing written) and the writer then names
# them with `_STORED` (docs/foundation.md, "Duplicates"). The incidents INSERT takes its row locks
# (and the unique index's insertion locks) in fingerprint order, the global lock order of ingest.
# `xmax = 0` tells a row this statement inserted from one it updated. A merge-only draft (its
# fingerprint was seen open by this process) carries only the counters; if its incident was resolved
# since, the INSERT would open an incident from stand-in values: the last column then divides by
# zero, which fails the whole statement with nothing written, and the writer answers `not_open` so
# the service plans the batch again with full drafts. A plan that assigns (a
# manual incident's assignee) also reads the previous assignee, `prior`, for its `assigned`
# timeline row; others skip that work.
_ASSIGNING = {
    "prior": f"""
), prior AS (
    -- the assignee an active incident had before a manual incident with an assignee joined it
    SELECT fingerprint, assignee FROM incidents
    WHERE {ACTIVE_STATUS_SQL} AND fingerprint IN (SELECT fingerprint FROM draft WHERE assignee IS NOT NULL)""",
    "set": ",\n                  assignee = coalesce(EXCLUDED.assignee, incidents.assignee)",
    "old": "CASE WHEN t.kind = 'assigned' AND NOT inc.created THEN p.assignee ELSE t.old_value END",
    "join": " LEFT JOIN prior p ON p.fingerprint = inc.fingerprint",
    "where": "\n    WHERE NOT (t.kind = 'assigned' AND NOT inc.created"
             " AND p.assignee IS NOT DISTINCT FROM t.new_value)",
}
_PLAIN = {"prior": "", "set": "", "old": "t.old_value", "join": "", "where": ""}
_TEMPLATE = f"""
WITH input AS (
    SELECT * FROM jsonb_populate_recordset(NULL::events, %(events)s::jsonb)
), draft AS (
    -- LATERAL: the record is built once per row (`(f(x)).*` would call f once per column)
    SELECT r.*, j.doc->'_on_create' AS on_create, j.doc->'_on_merge' AS on_merge, j.doc ? '_merge' AS merge_only,
           nextval(%(seq)s::regclass) AS n,  -- drawn in the array's order: by arrival
           -- the events' JSON parsed here, before the upsert takes the first row lock (the sort
           -- below reads every draft first), not while the rows are held
           (SELECT count(*) FROM input) AS parsed
    FROM jsonb_array_elements(%(incidents)s::jsonb) AS j(doc),
         LATERAL jsonb_populate_record(NULL::incidents, j.doc) AS r{{prior}}
), inc AS (
    INSERT INTO incidents (id, {_INCIDENT_COLUMNS})
    SELECT {incident_id_sql("%(day)s", "n")}, {_INCIDENT_VALUES}
    FROM draft ORDER BY fingerprint
    ON CONFLICT (fingerprint) WHERE {ACTIVE_STATUS_SQL}
    DO UPDATE SET event_count = incidents.event_count + EXCLUDED.event_count,
                  last_seen = greatest(incidents.last_seen, EXCLUDED.last_seen),
                  updated_at = EXCLUDED.updated_at{{set}}
    RETURNING id, fingerprint, xmax = 0 AS created
), ev AS (
    INSERT INTO events (source, event_id, incident_id, fingerprint, event_type, severity, title, occurred_at,
        received_at, payload, encrypted_payload)
    SELECT i.source, i.event_id, inc.id, i.fingerprint, i.event_type, i.severity, i.title, i.occurred_at,
        i.received_at, i.payload, i.encrypted_payload
    FROM input i JOIN inc ON inc.fingerprint = i.fingerprint
    RETURNING id
), tl AS (
    INSERT INTO incident_timeline (incident_id, at, actor, kind, field, old_value, new_value, details)
    SELECT inc.id, t.at, t.actor, t.kind, t.field, {{old}}, t.new_value, t.details
    FROM inc JOIN draft d ON d.fingerprint = inc.fingerprint{{join}},
         LATERAL jsonb_populate_recordset(NULL::incident_timeline,
                                          CASE WHEN inc.created THEN d.on_create ELSE d.on_merge END) AS t{{where}}
), ob AS (
    INSERT INTO outbox (kind, payload, created_at, attempts)
    SELECT %(kind)s, jsonb_build_object('event_ids', jsonb_agg(id ORDER BY id)), %(now)s, 0 FROM ev
    HAVING count(*) > 0
    RETURNING id
)
SELECT (SELECT id FROM ob), (SELECT jsonb_agg(jsonb_build_array(fingerprint, id, created)) FROM inc),
       (SELECT 1 / (count(*) = 0)::int FROM inc JOIN draft d ON d.fingerprint = inc.fingerprint
        WHERE inc.created AND d.merge_only)  -- division by zero: a merge-only draft opened an incident
"""
_STATEMENTS = {False: _TEMPLATE.format(**_PLAIN), True: _TEMPLATE.format(**_ASSIGNING)}
# The plan's events that are stored already, with their incident ids (after a unique violation).
_STORED = """
SELECT s.source, s.event_id, s.incident_id
FROM jsonb_to_recordset(%(events)s::jsonb) AS i(source text, event_id text)
JOIN events s ON s.source = i.source AND s.event_id = i.event_id
"""

_known_sequences: set[str] = set()


def _day_sequence(day: date) -> str:
    """The day's incident-number sequence (created once a day, in its own transaction): its
    nextval never waits on a row lock. Numbers drawn for events that joined an incident are gaps."""
    name = f"incident_seq_{day:%Y%m%d}"
    if name not in _known_sequences:
        from sqlalchemy.exc import DBAPIError, IntegrityError

        try:
            with get_engine().begin() as conn:
                conn.execute(text(f"CREATE SEQUENCE IF NOT EXISTS {name} START 1"))
        except (IntegrityError, DBAPIError) as exc:
            # Two first-incidents-of-the-day racing: the loser sees a duplicate catalog row; fine.
            if "already exists" not in str(exc) and "duplicate key" not in str(exc):
                raise
        _known_sequences.add(name)
    return name


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return "\\x" + bytes(value).hex()  # bytea's hex input format
    return str(value)


def _draft_doc(draft: Any) -> dict[str, Any]:
    if draft.merge_only:
        return {**draft.row, "_on_merge": draft.on_merge, "_merge": True}
    return {**draft.row, "_on_create": draft.on_create, "_on_merge": draft.on_merge}


def writes_merge_only_drafts(settings: Settings) -> bool:
    """Whether the configured database's writer takes merge-only drafts (Postgres; the SQLite
    writer, one writer at a time and no parsing to save, takes full drafts only)."""
    return not settings.is_sqlite


def write_postgres(plan: IngestPlan, settings: Settings) -> WriteOutcome:
    """The plan in one autocommit statement. Events stored before (a client's retry, or a
    concurrent request with the same events) fail it on the events' unique key with nothing
    written; they are then looked up and named (`stored_found`). A merge-only draft whose incident
    is no longer active fails it too, with nothing written (`not_open`). A lost connection re-runs it once
    (if the first run had committed, the re-run fails the same way and its events are answered as
    duplicates of themselves). Deadlocks are the caller's `retry_on_conflict`."""
    import psycopg

    statement = _STATEMENTS[any(draft.row.get("assignee") for draft in plan.incidents)]
    params = {
        "events": orjson.dumps(plan.events, default=_json_default).decode(),
        "incidents": orjson.dumps([_draft_doc(d) for d in plan.by_arrival()], default=_json_default).decode(),
        "seq": _day_sequence(plan.day), "day": f"{plan.day:%Y%m%d}", "now": plan.now, "kind": plan.outbox_kind,
    }
    for attempt in range(3):
        try:
            with autocommit_connection("ingest", settings) as conn:
                try:
                    outbox_id, touched, _ = conn.execute(statement, params).fetchone()  # type: ignore[misc]
                except psycopg.errors.DivisionByZero:
                    return WriteOutcome(not_open=True)
                except psycopg.errors.UniqueViolation:
                    keys = orjson.dumps([{"source": r["source"], "event_id": r["event_id"]} for r in plan.events])
                    stored = conn.execute(_STORED, {"events": keys.decode()}).fetchall()
                    if stored:
                        return WriteOutcome(stored_found={(source, event_id): incident
                                                          for source, event_id, incident in stored})
                    if attempt == 2:
                        raise
                    continue  # the conflicting row is gone (its transaction rolled back): run again
            break
        except psycopg.OperationalError as exc:
            if not is_outage(exc) or attempt == 2:
                raise
    return WriteOutcome(incidents={fp: (incident_id, created) for fp, incident_id, created in touched},
                        outbox_ids=(int(outbox_id),))


# -------------------------------------------------------------------------------------------- SQLite

def _allocate_numbers(session: Any, day: date, count: int) -> list[int]:
    """`count` fresh per-day numbers from a counter row (SQLite serialises writers anyway)."""
    upsert = sqlite.insert(IncidentDayCounter).values(day=day, last=count)
    stmt = upsert.on_conflict_do_update(
        index_elements=["day"], set_={"last": IncidentDayCounter.last + count}
    ).returning(IncidentDayCounter.last)
    last = int(session.execute(stmt).scalar_one())
    return list(range(last - count + 1, last + 1))


def write_sqlite(plan: IngestPlan, settings: Settings) -> WriteOutcome:
    """The plan in one transaction (BEGIN IMMEDIATE: one writer at a time)."""
    if any(d.merge_only for d in plan.incidents):  # not planned for SQLite (writes_merge_only_drafts)
        return WriteOutcome(not_open=True)
    with unit_of_work() as session:
        keys = list({(row["source"], row["event_id"]) for row in plan.events})
        stored: dict[tuple[str, str], str] = {}
        for start in range(0, len(keys), 500):
            found = session.execute(select(Event.source, Event.event_id, Event.incident_id).where(
                tuple_(Event.source, Event.event_id).in_(keys[start:start + 500]))).all()
            stored.update({(r.source, r.event_id): r.incident_id for r in found})
        if stored:
            return WriteOutcome(stored_found=stored)
        numbers = dict(zip((d.fingerprint for d in plan.by_arrival()),
                           _allocate_numbers(session, plan.day, len(plan.incidents)), strict=True))
        rows = [{**d.row, "id": format_incident_id(plan.day, numbers[d.fingerprint])} for d in plan.incidents]
        assigning = [d.fingerprint for d in plan.incidents if d.row.get("assignee")]
        prior = dict(session.execute(select(Incident.fingerprint, Incident.assignee).where(
            Incident.fingerprint.in_(assigning), text(ACTIVE_STATUS_SQL))).tuples().all()) if assigning else {}
        insert = sqlite.insert(Incident).values(rows)
        upsert = insert.on_conflict_do_update(
            index_elements=[Incident.fingerprint], index_where=text(ACTIVE_STATUS_SQL),
            set_={"event_count": Incident.event_count + insert.excluded.event_count,
                  "last_seen": func.max(Incident.last_seen, insert.excluded.last_seen),
                  "updated_at": insert.excluded.updated_at,
                  "assignee": func.coalesce(insert.excluded.assignee, Incident.assignee)},
        ).returning(Incident.id, Incident.fingerprint)
        allocated = {row["fingerprint"]: row["id"] for row in rows}
        touched = {r.fingerprint: (r.id, r.id == allocated[r.fingerprint]) for r in session.execute(upsert)}
        events = [{**row, "incident_id": touched[row["fingerprint"]][0],
                   "payload": dict(row["payload"])} for row in plan.events]
        event_ids = [r[0] for r in session.execute(sqlite.insert(Event).values(events).returning(Event.id))]
        timeline = [{**entry, "incident_id": touched[d.fingerprint][0]}
                    for d in plan.incidents if touched[d.fingerprint][1] for entry in d.on_create]
        for d in (d for d in plan.incidents if not touched[d.fingerprint][1]):
            for entry in d.on_merge:
                if entry["kind"] == "assigned":  # the previous assignee, as the Postgres statement does
                    if prior.get(d.fingerprint) == entry["new_value"]:
                        continue
                    entry = {**entry, "old_value": prior.get(d.fingerprint)}
                timeline.append({**entry, "incident_id": touched[d.fingerprint][0]})
        session.execute(sqlite.insert(TimelineEntry).values(timeline))
        outbox_id = session.execute(sqlite.insert(OutboxMessage).values(
            kind=plan.outbox_kind, payload={"event_ids": event_ids}, created_at=plan.now, attempts=0,
        ).returning(OutboxMessage.id)).scalar_one()
    return WriteOutcome(incidents=touched, outbox_ids=(int(outbox_id),))


def writer_for(settings: Settings) -> Writer:
    return write_sqlite if settings.is_sqlite else write_postgres
