"""Merge-only drafts (docs/foundation.md, "Alert storms"): events joining an incident this process
saw open send only the counters, and store exactly the rows a full draft stores; an incident
resolved (or gone) since is opened anew from the full event, never from the statement's stand-ins.
Real Postgres, in-process ingest."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest
from sqlalchemy import text

from app.adapters.db import read_session, unit_of_work
from app.services import ingest as ingest_service
from app.services.ingest import OPEN_FINGERPRINTS, ingest_events
from tests.integration.test_ingest_rest import SENTINEL

INCIDENT_COLUMNS = ("title, description, source, event_type, category, severity, source_severity, status, "
                    "event_count, first_seen, last_seen, team, escalation_policy, service, resource, metrics, tags, "
                    "sla_acknowledge_breached, sla_resolve_breached, escalation_level, next_escalation_at, "
                    "sla_resolve_by - created_at AS resolve_within, updated_at = created_at AS untouched")
EVENT_COLUMNS = ("source, event_id, event_type, severity, title, occurred_at, payload, encrypted_payload, "
                 "fingerprint = (SELECT fingerprint FROM incidents i WHERE i.id = e.incident_id) AS same_fingerprint")


def sentinel(event_id: str, title: str) -> dict[str, Any]:
    event = copy.deepcopy(SENTINEL)
    event.update(event_id=event_id, title=title)
    return event


def storm_batch(tag: str, batch: int, size: int = 1000, fingerprints: int = 300) -> list[Any]:
    """A storm batch, shuffled the same way whatever the tag (the tags' rows then compare equal)."""
    bodies = [sentinel(f"{tag}-{batch}-{i}", f"Storm {tag} endpoint {i % fingerprints} failing") for i in range(size)]
    random.Random(batch).shuffle(bodies)
    return new_events(bodies)


def new_events(bodies: list[dict[str, Any]]) -> list[Any]:
    from api.schemas import validate_events

    valid, _, rejected = validate_events(bodies)
    assert not rejected
    return valid


@pytest.fixture
def merge_only_drafts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the merge-only drafts each write received (and starts from an empty hint)."""
    OPEN_FINGERPRINTS.clear()
    seen: list[int] = []
    write = ingest_service.writer_for

    def counting(settings: Any) -> Any:
        inner = write(settings)

        def run(plan: Any, settings: Any) -> Any:
            seen.append(sum(1 for d in plan.incidents if d.merge_only))
            return inner(plan, settings)

        return run

    monkeypatch.setattr(ingest_service, "writer_for", counting)
    return seen


def rows(tag: str) -> dict[str, list[str]]:
    """The rows a tag's events wrote, with the tag and the per-run ids taken out, in a stable order."""
    with read_session() as session:
        incidents = session.execute(text(
            f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE title LIKE :t ORDER BY title"), {"t": f"Storm {tag} %"})
        events = session.execute(text(
            f"SELECT {EVENT_COLUMNS}, (SELECT title FROM incidents i WHERE i.id = e.incident_id) AS incident "
            "FROM events e WHERE event_id LIKE :t ORDER BY event_id"), {"t": f"{tag}-%"})
        timeline = session.execute(text(
            "SELECT i.title, t.actor, t.kind, t.field, t.old_value, t.new_value, t.details, t.at = i.created_at "
            "FROM incident_timeline t JOIN incidents i ON i.id = t.incident_id WHERE i.title LIKE :t "
            "ORDER BY i.title, t.id"), {"t": f"Storm {tag} %"})
        out = {name: [json.dumps([str(v) for v in row]).replace(tag, "TAG") for row in result]
               for name, result in (("incidents", incidents), ("events", events), ("timeline", timeline))}
    with read_session() as session:
        fingerprints = session.execute(text(
            "SELECT fingerprint FROM incidents WHERE title LIKE :t ORDER BY title"), {"t": f"Storm {tag} %"})
        out["fingerprints"] = [row[0] for row in fingerprints]
    return out


def test_a_storm_batch_through_merge_only_drafts_stores_the_same_rows_as_full_drafts(db, merge_only_drafts):
    """1,000 events over 300 fingerprints (several events a draft), twice per tag: the second batch
    of `hinted` goes through merge-only drafts, that of `full` through full drafts (hint cleared)."""
    for tag, keep_hint in (("hinted", True), ("full", False)):
        first = storm_batch(tag, 0)
        assert all(r.status == "accepted" for r in ingest_events(first))
        if not keep_hint:
            OPEN_FINGERPRINTS.clear()
        second = storm_batch(tag, 1)
        results = ingest_events(second)
        assert [r.status for r in results] == ["accepted"] * 1000
        assert not any(r.created for r in results)
    assert merge_only_drafts == [0, 300, 0, 0]
    hinted, full = rows("hinted"), rows("full")
    assert len(hinted["incidents"]) == 300 and len(hinted["events"]) == 2000 and len(hinted["timeline"]) == 600
    assert {k: v for k, v in hinted.items() if k != "fingerprints"} == \
        {k: v for k, v in full.items() if k != "fingerprints"}
    with read_session() as session:
        counts = session.execute(text("SELECT min(event_count), max(event_count) FROM incidents")).one()
    assert tuple(counts) == (6, 8)  # 2 x 1,000 events over 300 fingerprints: 3 or 4 each a batch


@pytest.mark.parametrize("gone", ["resolved", "deleted"])
def test_an_incident_closed_since_it_was_seen_open_is_opened_anew_from_the_full_event(db, merge_only_drafts, gone):
    """The hint is only a hint: the statement refuses to open an incident from a merge-only draft
    (nothing written) and the batch is planned again in full."""
    first = ingest_events(new_events([sentinel(f"g-{n}", f"Storm gone endpoint {n} failing") for n in range(3)]))
    with unit_of_work() as session:
        if gone == "resolved":
            session.execute(text("UPDATE incidents SET status = 'RESOLVED' WHERE id = :id"),
                            {"id": first[1].incident_id})
        else:  # e.g. a test's TRUNCATE: the hint outlives the rows
            session.execute(text("DELETE FROM incident_timeline WHERE incident_id = :id"),
                            {"id": first[1].incident_id})
            session.execute(text("DELETE FROM incidents WHERE id = :id"), {"id": first[1].incident_id})
    second = ingest_events(new_events([sentinel(f"h-{n}", f"Storm gone endpoint {n} failing") for n in range(3)]))
    assert merge_only_drafts == [0, 3, 0]  # the merge-only attempt wrote nothing; the full one did
    assert [r.status for r in second] == ["accepted"] * 3
    assert [r.incident_id for r in second][::2] == [first[0].incident_id, first[2].incident_id]
    assert second[1].incident_id != first[1].incident_id and second[1].created
    with read_session() as session:
        reopened = session.execute(text("SELECT title, description, source, severity, event_count, tags "
                                        "FROM incidents WHERE id = :id"), {"id": second[1].incident_id}).one()
        kinds = session.execute(text("SELECT kind FROM incident_timeline WHERE incident_id = :id"),
                                {"id": second[1].incident_id}).scalars().all()
        totals = session.execute(text("SELECT count(*) FROM events WHERE event_id LIKE 'h-%'")).scalar_one()
        stand_ins = session.execute(text("SELECT count(*) FROM incidents WHERE title = ''")).scalar_one()
    assert reopened.title == "Storm gone endpoint 1 failing" and reopened.source == "llm-sentinel"
    assert reopened.description == SENTINEL["description"] and reopened.severity == "P1"
    assert reopened.event_count == 1 and reopened.tags == SENTINEL["tags"]
    assert kinds == ["created"] and totals == 3 and stand_ins == 0
    assert len(OPEN_FINGERPRINTS) == 3  # dropped on the refusal, refilled by the full write


def test_a_merge_only_batch_with_a_stored_duplicate_accepts_the_rest_exactly_once(db, merge_only_drafts):
    first = ingest_events(new_events([sentinel(f"d-{n}", f"Storm dup endpoint {n} failing") for n in range(3)]))
    batch = [sentinel("d-1", "Storm dup endpoint 1 failing"), sentinel("d-4", "Storm dup endpoint 1 failing"),
             sentinel("d-5", "Storm dup endpoint 2 failing"), sentinel("d-4", "Storm dup endpoint 1 failing")]
    results = ingest_events(new_events(batch))
    assert [r.status for r in results] == ["duplicate", "accepted", "accepted", "duplicate"]
    assert [r.incident_id for r in results] == [first[1].incident_id, first[1].incident_id,
                                                first[2].incident_id, first[1].incident_id]
    assert merge_only_drafts == [0, 2, 2]  # refused on the stored d-1, then written without it
    with read_session() as session:
        counts = {r.id: r.event_count for r in session.execute(text("SELECT id, event_count FROM incidents"))}
        events = session.execute(text("SELECT count(*) FROM events")).scalar_one()
    assert counts == {first[0].incident_id: 1, first[1].incident_id: 2, first[2].incident_id: 2} and events == 5
