"""The pure ingest plan (app.services.ingest.plan_ingest) and the reading of a writer's outcome
(app.domain.ingest), without a database; and the bounded retry of lost races (app.adapters.db)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from prometheus_client import REGISTRY

from app.adapters.db import retry_on_conflict, sqlstate
from app.config import load_settings
from app.domain.ingest import MERGE_COLUMNS, IngestResult, NewEvent, WriteOutcome, opened, results
from app.services.ingest import plan_ingest

NOW = datetime(2026, 12, 6, 3, 0, tzinfo=timezone.utc)


@pytest.fixture
def settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = tmp_path / "config.yaml"
    config.write_text("integrations:\n  llm-shield:\n    routing:\n      default_team: security-team\n"
                      "      escalation_policy: security-critical\n      auto_page: true\n")
    return load_settings({"DATA_DIR": str(tmp_path / "data"), "CONFIG_FILE": str(config)})


def ev(event_id: str, title: str, source: str = "llm-sentinel", severity: str = "high") -> NewEvent:
    return NewEvent(source=source, event_id=event_id, title=title, raw={"event_id": event_id}, severity=severity)


def test_one_draft_per_fingerprint_sorted_by_fingerprint_with_repeats_and_stored_left_out(settings):
    events = [ev("e1", "B"), ev("e2", "A"), ev("e3", "B"), ev("e1", "B"), ev("e4", "C"), ev("e5", "C")]
    plan = plan_ingest(events, settings, NOW, stored={("llm-sentinel", "e5"): "INC-20261201-00009"})
    fingerprints = [d.fingerprint for d in plan.incidents]
    assert fingerprints == sorted(fingerprints) and len(fingerprints) == 3  # the global lock order
    positions = {events[d.positions[0]].title: d.positions for d in plan.incidents}
    assert positions == {"B": (0, 2), "A": (1,), "C": (4,)}  # the repeat of e1 and the stored e5 write nothing
    assert [row["event_id"] for row in plan.events] == [events[i].event_id for d in plan.incidents
                                                        for i in d.positions]
    assert sorted(row["event_id"] for row in plan.events) == ["e1", "e2", "e3", "e4"]
    assert all(row["fingerprint"] == d.fingerprint for d in plan.incidents for row in plan.events
               if row["event_id"] in {events[i].event_id for i in d.positions})
    assert {d.row["event_count"] for d in plan.incidents if d.positions == (0, 2)} == {2}
    assert all("id" not in d.row for d in plan.incidents)  # the writer draws the id
    assert [events[d.positions[0]].title for d in plan.by_arrival()] == ["B", "A", "C"]  # numbers follow arrival


def test_results_read_the_outcome_in_input_order(settings):
    events = [ev("e1", "B"), ev("e2", "A"), ev("e3", "B"), ev("e1", "B"), ev("e5", "C")]
    plan = plan_ingest(events, settings, NOW, stored={("llm-sentinel", "e5"): "INC-20261201-00009"})
    ids = {events[d.positions[0]].title: (f"INC-20261206-0000{n}", d.fingerprint) for n, d in enumerate(plan.incidents)}
    outcome = WriteOutcome(incidents={ids["B"][1]: (ids["B"][0], True), ids["A"][1]: (ids["A"][0], False)},
                           outbox_ids=(7,))
    assert results(plan, outcome) == [
        IngestResult("accepted", "e1", ids["B"][0], created=True),
        IngestResult("accepted", "e2", ids["A"][0], created=False),
        IngestResult("accepted", "e3", ids["B"][0], created=False),
        IngestResult("duplicate", "e1", ids["B"][0]),
        IngestResult("duplicate", "e5", "INC-20261201-00009"),
    ]
    assert [(o["id"], o["title"], o["status"]) for o in opened(plan, outcome)] == [(ids["B"][0], "B", "NEW")]


def test_timeline_rule_created_paged_or_merged(settings):
    plan = plan_ingest([ev("s1", "Injection", "llm-shield", "critical"), ev("s2", "Injection", "llm-shield"),
                        ev("l1", "Quiet", "llm-shield", "low")], settings, NOW)
    by_title = {d.row["title"]: d for d in plan.incidents}
    paged, quiet = by_title["Injection"], by_title["Quiet"]
    assert [t["kind"] for t in paged.on_create] == ["created", "auto_page"]
    assert paged.on_create[1]["details"] == {"escalation_policy": "security-critical", "team": "security-team"}
    assert paged.row["next_escalation_at"] == NOW and quiet.row["next_escalation_at"] is None
    assert [t["kind"] for t in quiet.on_create] == ["created"]
    assert paged.on_merge == [{"at": NOW, "actor": "llm-shield", "kind": "event_merged", "field": "event_count",
                               "old_value": None, "new_value": None,
                               "details": {"event_ids": ["s1", "s2"], "events": 2}}]


def test_a_batch_of_stored_events_plans_nothing(settings):
    plan = plan_ingest([ev("e1", "A")], settings, NOW, stored={("llm-sentinel", "e1"): "INC-20261201-00001"})
    assert plan.empty and results(plan, WriteOutcome()) == [IngestResult("duplicate", "e1", "INC-20261201-00001")]


def test_a_fingerprint_seen_open_gets_a_merge_only_draft_unless_it_assigns(settings):
    """Merge-only: only what a merge writes (no incident row to build, send and parse), the same
    merge timeline row; an event that assigns someone keeps its full draft (its merge reads the
    previous assignee)."""
    events = [ev("m1", "Known"), ev("m2", "Known"), ev("n1", "New"),
              NewEvent(source="llm-sentinel", event_id="a1", title="Assigned", raw={}, assignee="ana")]
    full = plan_ingest(events, settings, NOW)
    known = {d.row["title"]: d.fingerprint for d in full.incidents}
    plan = plan_ingest(events, settings, NOW, open_fingerprints={known["Known"], known["Assigned"]})
    drafts = {d.fingerprint: d for d in plan.incidents}
    merge, new, assigning = drafts[known["Known"]], drafts[known["New"]], drafts[known["Assigned"]]
    assert merge.merge_only and not new.merge_only and not assigning.merge_only
    assert merge.row == {"fingerprint": known["Known"], "event_count": 2, "first_seen": NOW, "last_seen": NOW,
                         "updated_at": NOW}
    assert tuple(merge.row) == MERGE_COLUMNS and merge.on_create == []
    full_merge = next(d for d in full.incidents if d.fingerprint == known["Known"])
    assert merge.on_merge == full_merge.on_merge and merge.positions == full_merge.positions
    assert [d.fingerprint for d in plan.incidents] == [d.fingerprint for d in full.incidents]  # the lock order
    assert plan.events == full.events


def _retries(code: str) -> float:
    return REGISTRY.get_sample_value("incident_manager_db_retries_total",
                                     {"operation": "unit", "sqlstate": code}) or 0.0


def test_retry_on_conflict_reruns_lost_races_by_sqlstate_and_is_bounded():
    calls: list[int] = []

    def loses_twice() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        if len(calls) == 2:
            raise psycopg.errors.SerializationFailure("could not serialize access")
        return "done"

    before = (_retries("40P01"), _retries("40001"))
    assert retry_on_conflict("unit", loses_twice, base_delay=0.001) == "done" and len(calls) == 3
    assert (_retries("40P01"), _retries("40001")) == (before[0] + 1, before[1] + 1)

    calls.clear()

    def always_loses() -> None:
        calls.append(1)
        raise psycopg.errors.DeadlockDetected("deadlock detected")

    with pytest.raises(psycopg.errors.DeadlockDetected):
        retry_on_conflict("unit", always_loses, attempts=3, base_delay=0.001)
    assert len(calls) == 3

    calls.clear()

    def duplicate() -> None:
        calls.append(1)
        raise psycopg.errors.UniqueViolation("duplicate key")

    with pytest.raises(psycopg.errors.UniqueViolation):
        retry_on_conflict("unit", duplicate, base_delay=0.001)
    assert len(calls) == 1  # not a race to re-run


def test_sqlstate_reads_through_sqlalchemy_wrapping():
    from sqlalchemy.exc import OperationalError

    wrapped = OperationalError("UPDATE ...", {}, psycopg.errors.DeadlockDetected("deadlock detected"))
    assert sqlstate(wrapped) == "40P01" and sqlstate(ValueError("x")) is None
