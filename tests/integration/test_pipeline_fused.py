"""One task per batch (`pipeline.batch`, the stages in one process) against a task per stage (the
batch through JSON between stages, PIPELINE_STAGE_TASKS=true): the same rows, on the real database;
and both modes through a real worker."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pytest
import redis
from sqlalchemy import select, text

from app.adapters.db import get_engine, read_session
from app.adapters.models import Event, Incident, TimelineEntry
from app.adapters.pipeline_models import CorrelationGroup, CorrelationMember
from app.services import pipeline
from app.services.ingest import NewEvent, ingest_events
from app.services.pipeline import correlation, enrichment
from app.services.pipeline import text as textsim
from tests.conftest import TABLES_TO_KEEP, WorkerProcess, wait_for

pytestmark = pytest.mark.integration

SENTINEL = json.loads((Path(__file__).parent.parent / "fixtures" / "sentinel-event.json").read_text())
TITLES = ["GPU memory exhausted on node", "Latency spike on chat completion", "Prompt injection attempt blocked",
          "Token usage over budget for tenant"]


def _events(tag: str, start: int, count: int) -> list[NewEvent]:
    """`count` events, two per incident, over four kinds of alert (so some correlate, some are similar)."""
    events = []
    for i in range(start, start + count):
        group = i // 2
        events.append(NewEvent(
            source="llm-sentinel" if group % 3 else "llm-shield", event_id=f"{tag}-{i}",
            title=f"{TITLES[group % len(TITLES)]} {group}", raw={}, event_type="anomaly" if group % 2 else "violation",
            severity=("critical", "high", "medium", "low")[group % 4], description=f"detail of alert {group % 5}",
            resource={"type": "service", "id": f"svc-{group % 3}"}, tags={"env": "prod", "zone": f"z{group % 2}"}))
    return events


def _ingest(events: list[NewEvent]) -> list[int]:
    outbox: list[int] = []
    ingest_events(events, dispatcher=outbox.extend)
    return outbox


def _fresh_state(test_env: dict[str, str]) -> None:
    """A clean database, and no cache of an earlier run in this process or in Redis."""
    with get_engine().begin() as conn:
        tables = [r[0] for r in conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")) if r[0] not in TABLES_TO_KEEP]
        conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))
    client = redis.Redis.from_url(test_env["REDIS_URL"])
    for key in client.scan_iter("im:enrich:*"):
        client.delete(key)
    correlation._CANDIDATES.clear()
    enrichment._HISTORY.clear()
    textsim._cache.clear()


def _hop(value: Any) -> Any:
    """The batch as the next stage task receives it (Celery's json serializer, both ways)."""
    return json.loads(json.dumps(value)) if isinstance(value, dict) else value


def _staged(outbox_ids: list[int]) -> int:
    value: Any = outbox_ids
    for _name, stage in pipeline.STAGE_FUNCTIONS:
        value = _hop(stage(value, None))
    return int(value)


def _fused(outbox_ids: list[int]) -> int:
    result = pipeline.run_batch(outbox_ids)
    assert list(result["stages_ms"]) == ["dedup", "classify", "enrich", "correlate", "route"]
    return int(result["events"])


def _rows() -> dict[str, Any]:
    """Everything the pipeline wrote, with incidents named by title (ids and times set aside)."""
    volatile = {"processed_at", "updated_at", "created_at", "first_seen", "last_seen", "sla_acknowledge_by",
                "sla_resolve_by", "id", "correlation_group_id"}
    with read_session() as session:
        incidents = list(session.scalars(select(Incident)))
        title = {i.id: i.title for i in incidents}
        groups = {g.id: g for g in session.scalars(select(CorrelationGroup))}
        group_name = {gid: title[g.root_incident_id] for gid, g in groups.items()}

        def scrub(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: scrub(v) for k, v in value.items()
                        if k not in ("enriched_at", "duration_ms", "resolved_at")}
            if isinstance(value, list):
                return [scrub(v) for v in value]
            if isinstance(value, str):
                return title.get(value) or group_name.get(value) or value
            return value

        rows: dict[str, Any] = {}
        for incident in incidents:
            columns = {c.key: getattr(incident, c.key) for c in Incident.__table__.columns if c.key not in volatile}
            columns["group"] = group_name.get(incident.correlation_group_id or "")
            columns["processed"] = incident.processed_at is not None
            rows[incident.title] = scrub(columns)
        timeline = sorted((title[t.incident_id], t.kind, t.old_value, t.new_value,
                           json.dumps(scrub(t.details), sort_keys=True, default=str))
                          for t in session.scalars(select(TimelineEntry)))
        members = sorted((title[m.incident_id], group_name[m.group_id], round(m.score, 6),
                          json.dumps(scrub(m.reasons), sort_keys=True))
                         for m in session.scalars(select(CorrelationMember)))
        group_rows = sorted((group_name[g.id], g.member_count, round(g.score, 6),
                             json.dumps(scrub(g.reasons), sort_keys=True)) for g in groups.values())
        unprocessed = session.scalar(select(Event.id).where(Event.processed_at.is_(None)).limit(1))
    return {"incidents": rows, "timeline": timeline, "members": members, "groups": group_rows,
            "unprocessed": unprocessed}


def _run(runner: Callable[[list[int]], int], test_env: dict[str, str]) -> dict[str, Any]:
    _fresh_state(test_env)
    assert runner(_ingest(_events("a", 0, 40))) == 40  # the history: similar incidents, correlation window
    assert runner(_ingest(_events("b", 40, 40) + _events("a", 0, 6))) == 40  # six duplicates refused
    assert runner(_ingest(_events("c", 80, 10))) == 10
    return _rows()


def test_one_task_per_batch_writes_exactly_what_a_task_per_stage_writes(db, test_env):
    staged = _run(_staged, test_env)
    fused = _run(_fused, test_env)
    assert staged["unprocessed"] is None and fused["unprocessed"] is None
    assert len(staged["incidents"]) == 45 and staged["groups"] and staged["members"], "the case groups and enriches"
    assert any(row["enrichment"]["similar_incidents"] for row in staged["incidents"].values())
    for key in ("incidents", "timeline", "members", "groups"):
        assert fused[key] == staged[key], key


@pytest.mark.parametrize("stage_tasks", ["false", "true"])
def test_a_batch_goes_through_a_real_worker_in_either_mode(app, make_key, test_env, stage_tasks):
    worker = WorkerProcess({**test_env, "PIPELINE_STAGE_TASKS": stage_tasks}, queues="pipeline", concurrency=2)
    try:
        worker.wait_ready()
        key = make_key("event:create", "incident:read")
        client = app.test_client()
        body = {"events": [{**SENTINEL, "event_id": f"w-{i}", "title": f"Latency spike {i // 2}",
                            "timestamp": datetime.now(timezone.utc).isoformat()} for i in range(20)]}
        accepted = client.post("/api/v1/events", json=body, headers={"X-API-Key": key})
        assert accepted.status_code == 202, accepted.get_json()

        def done() -> bool:
            with read_session() as session:
                return session.scalar(select(Event.id).where(Event.processed_at.is_(None)).limit(1)) is None

        wait_for(done, 60, 0.2, "the batch to be processed")
        with read_session() as session:
            incidents = list(session.scalars(select(Incident)))
        assert len(incidents) == 10 and all(i.processed_at is not None and i.event_count == 2 for i in incidents)
        from tasks.celery_app import app as celery

        stats = celery.control.inspect(destination=[f"{worker.name}@{os.uname().nodename}"], timeout=5).stats()
        ran = set(next(iter(stats.values()))["total"])
        if stage_tasks == "true":
            assert {"pipeline.dedup", "pipeline.route"} <= ran and "pipeline.batch" not in ran, ran
        else:
            assert "pipeline.batch" in ran and not ran & {"pipeline.dedup", "pipeline.route"}, ran
    finally:
        worker.stop()


def test_a_drain_that_fails_puts_back_the_ids_it_took(db, test_env, monkeypatch):
    """Ids the drain popped but could not hand to a batch (the broker refused the send) go back to
    the pending list for the drain's retry, instead of waiting for the outbox relay."""
    import tasks.pipeline as tasks_pipeline
    from tasks.dispatch import PENDING_KEY

    client = redis.Redis.from_url(test_env["REDIS_URL"])
    client.rpush(PENDING_KEY, 11, 12, 13)
    monkeypatch.setattr(tasks_pipeline.service, "pack_outbox", lambda ids, _size: [[i] for i in ids])
    started: list[list[int]] = []

    def start(group: list[int]) -> None:
        if len(started) == 1:
            raise ConnectionError("broker went away")
        started.append(group)

    monkeypatch.setattr(tasks_pipeline, "start_chain", start)
    with pytest.raises(ConnectionError):
        tasks_pipeline.drain.run()
    assert started == [[11]]
    assert sorted(int(x) for x in client.lrange(PENDING_KEY, 0, -1)) == [12, 13]
