"""Reliability of the pipeline with real workers: dedup under concurrency, a worker SIGKILLed
again and again while events flow, poison events to the dead-letter table and back."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from app.adapters.db import read_session, unit_of_work
from app.adapters.models import DeadLetter, Event, Incident, OutboxMessage
from app.adapters.pipeline_models import CorrelationMember
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def fresh_enrichment_cache(test_env: dict[str, str]) -> None:
    """Enrichment answers cached in Redis by an earlier test must not leak into this one."""
    import redis

    client = redis.Redis.from_url(test_env["REDIS_URL"])
    for key in client.scan_iter("im:enrich:*"):
        client.delete(key)


def _event(i: int, title: str = "GPU pool exhausted", resource: str = "gpu-pool-a") -> dict[str, Any]:
    return {"event_id": f"evt-{i}", "source": "llm-sentinel", "event_type": "anomaly", "title": title,
            "description": "no free GPUs for inference", "severity": "critical",
            "resource": {"type": "service", "id": resource}, "tags": {"environment": "production"}}


def _all_processed(expected_events: int) -> bool:
    with read_session() as session:
        done = session.scalar(select(func.count(Event.id)).where(Event.processed_at.is_not(None)))
        open_outbox = session.scalar(select(func.count(OutboxMessage.id)).where(OutboxMessage.done_at.is_(None)))
        fresh = session.scalar(select(func.count(Incident.id)).where(Incident.processed_at.is_(None)))
    return done == expected_events and open_outbox == 0 and fresh == 0


@pytest.mark.slow
def test_200_events_one_fingerprint_8_threads_2_workers_make_one_incident(app, make_key, start_worker):
    start_worker(queues="pipeline", concurrency=1, name="dedup-a")
    start_worker(queues="pipeline", concurrency=1, name="dedup-b")
    key = make_key("event:create", "incident:read")
    barrier = threading.Barrier(8)

    def send(thread: int) -> list[str]:
        client = app.test_client()
        barrier.wait()
        ids = []
        for i in range(thread, 200, 8):
            response = client.post("/api/v1/events", json=_event(i), headers={"X-API-Key": key})
            assert response.status_code == 202, response.get_json()
            ids.append(response.get_json()["incident_id"])
        return ids

    with ThreadPoolExecutor(8) as pool:
        given = [i for ids in pool.map(send, range(8)) for i in ids]
    assert len(given) == 200
    wait_for(lambda: _all_processed(200), 60, 0.2, "all 200 events to be processed")

    with read_session() as session:
        incidents = list(session.scalars(select(Incident).where(Incident.merged_into.is_(None))))
        assert len(incidents) == 1
        [incident] = incidents
        assert incident.event_count == 200
        assert session.scalar(select(func.count(Event.id)).where(Event.incident_id == incident.id)) == 200
        assert incident.predicted_severity == "P0" and incident.processed_at is not None
    # Every id given out at ingest answers with the surviving incident.
    client = app.test_client()
    for incident_id in set(given):
        body = client.get(f"/api/v1/incidents/{incident_id}", headers={"X-API-Key": key}).get_json()
        assert body["id"] == incident.id and body["event_count"] == 200

    # The guarantee lives in the database: a second active incident with this fingerprint is refused.
    with pytest.raises(IntegrityError):
        with unit_of_work() as session:
            now = datetime.now(timezone.utc)
            session.add(Incident(id="INC-20990101-00001", title="dup", source="llm-sentinel", severity="P0",
                                 status="NEW", fingerprint=incident.fingerprint, first_seen=now, last_seen=now,
                                 tags={}))


@pytest.mark.slow
def test_sigkill_a_worker_every_few_seconds_while_5000_events_flow(app, make_key, start_worker, test_env):
    # Beat (outbox relay every 10 s) runs on a worker that is never killed; the pipeline workers are.
    start_worker(queues="ingest", concurrency=1, name="relay", beat=True)
    workers = [start_worker(queues="pipeline", concurrency=2, name=f"victim-{n}") for n in range(2)]
    key = make_key("event:create")
    sent = threading.Event()

    def send(chunk: int) -> None:
        client = app.test_client()
        # 500 fingerprints (titles), so dedup, classification and correlation all have work.
        events = [_event(i, title=f"GPU pool exhausted #{i % 500}") for i in range(chunk * 50, chunk * 50 + 50)]
        response = client.post("/api/v1/events", json={"events": events}, headers={"X-API-Key": key})
        assert response.status_code == 202
        time.sleep(0.25)  # ~400 events/s: the flow lasts long enough for several kills

    two_kills = threading.Event()

    def sender() -> None:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(send, range(80)))
            # The last fifth goes after the second kill: kills land mid-flow however long a
            # worker takes to start on a loaded machine (it was timing, and failed under load).
            two_kills.wait(180)
            list(pool.map(send, range(80, 100)))
        sent.set()

    thread = threading.Thread(target=sender)
    thread.start()
    kills_during_flow = kills = 0
    n = 2
    while not sent.is_set() or kills < 4:
        time.sleep(random.uniform(1.5, 2.5))
        victim = workers.pop(0)
        victim.kill()  # SIGKILL to the worker's whole process group, mid-batch
        kills += 1
        kills_during_flow += 0 if sent.is_set() else 1
        if kills >= 2:
            two_kills.set()
        n += 1
        workers.append(start_worker(queues="pipeline", concurrency=2, name=f"victim-{n}"))
    thread.join()
    assert kills_during_flow >= 2
    wait_for(lambda: _all_processed(5000), 150, 0.5, "all 5,000 events to be processed after the kills")

    with read_session() as session:
        assert session.scalar(select(func.count(Event.id))) == 5000
        assert session.scalar(select(func.count(func.distinct(Event.event_id)))) == 5000
        incidents = list(session.scalars(select(Incident).where(Incident.merged_into.is_(None))))
        assert len(incidents) == 500
        assert len({i.fingerprint for i in incidents}) == 500
        assert sum(i.event_count for i in incidents) == 5000
        counts = dict(session.execute(
            select(Event.incident_id, func.count(Event.id)).group_by(Event.incident_id)).all())
        assert all(counts[i.id] == i.event_count == 10 for i in incidents)
        assert all(i.processed_at is not None and i.predicted_severity == "P0" for i in incidents)
        # One pipeline verdict per incident, even with batches redelivered and relayed.
        classified = dict(session.execute(text(
            "SELECT incident_id, count(*) FROM incident_timeline WHERE kind = 'classified' "
            "GROUP BY incident_id")).all())
        assert len(classified) == 500 and set(classified.values()) == {1}
        members = session.scalar(select(func.count(CorrelationMember.incident_id)))
        grouped = session.scalar(select(func.count(Incident.id)).where(Incident.correlation_group_id.is_not(None)))
        assert grouped == members


def test_poison_event_is_dead_lettered_alone_and_replayed(app, make_key, start_worker, test_env):
    from tasks.dispatch import dispatch_pipeline

    start_worker(queues="pipeline", concurrency=1)
    key = make_key("event:create", "incident:read")
    client = app.test_client()
    # A healthy event, and a poison one: its incident row is missing (a restored partial backup).
    good = client.post("/api/v1/events", json=_event(1), headers={"X-API-Key": key}).get_json()
    now = datetime.now(timezone.utc)
    with unit_of_work() as session:
        poison = Event(source="llm-sentinel", event_id="poison-1", incident_id="INC-20990101-99999",
                       fingerprint="x" * 64,
                       title="poison", received_at=now, payload={"title": "poison"})
        session.add(poison)
        session.flush()
        row = OutboxMessage(kind="pipeline", payload={"event_ids": [poison.id]}, created_at=now, attempts=0)
        session.add(row)
        session.flush()
        poison_outbox, poison_id = row.id, poison.id
    with read_session() as session:
        good_outbox = session.scalar(select(OutboxMessage.id).where(OutboxMessage.id != poison_outbox))
    # Both in one batch: the poison one must not hold the good one back.
    dispatch_pipeline([poison_outbox, good_outbox])

    def dead_letter() -> DeadLetter | None:
        with read_session() as session:
            return session.scalars(select(DeadLetter)).first()

    letter = wait_for(dead_letter, 60, 0.3, "the poison event's batch to be dead-lettered")
    assert letter.task_name == "pipeline.batch" and letter.args == [[poison_outbox]]
    assert "BrokenEvent" in letter.error and "INC-20990101-99999" in letter.error and letter.attempts == 3
    body = client.get(f"/api/v1/incidents/{good['incident_id']}", headers={"X-API-Key": key}).get_json()
    assert body["processed_at"] is not None
    with read_session() as session:
        assert session.get(Event, poison_id).processed_at is None

    # The operator restores the missing incident, lists and replays the dead letter with the CLI.
    with unit_of_work() as session:
        session.add(Incident(id="INC-20990101-99999", title="poison", source="llm-sentinel", severity="P3",
                             status="NEW", fingerprint="x" * 64, first_seen=now, last_seen=now, tags={}))
    env = {**os.environ, **test_env}
    listed = subprocess.run([sys.executable, "-m", "cli", "deadletters", "list"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "pipeline.batch" in listed.stdout, listed.stderr
    replayed = subprocess.run([sys.executable, "-m", "cli", "deadletters", "replay", str(letter.id)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=60)
    assert replayed.returncode == 0, replayed.stderr

    def poison_processed() -> bool:
        with read_session() as session:
            return session.get(Event, poison_id).processed_at is not None and \
                session.get(Incident, "INC-20990101-99999").processed_at is not None

    wait_for(poison_processed, 30, 0.3, "the replayed batch to run every stage")
