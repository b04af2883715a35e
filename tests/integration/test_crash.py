"""Nothing accepted is lost: SIGKILL the web mid-stream; lose the broker; lose the Redis list."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis as redis_lib
from sqlalchemy import select

from app.adapters.db import read_session
from app.adapters.models import Event, OutboxMessage
from tests.conftest import wait_for
from tests.integration.test_gunicorn import Gunicorn

SENTINEL = json.loads((Path(__file__).parent.parent / "fixtures" / "sentinel-event.json").read_text())


def stored_events() -> dict[str, Event]:
    with read_session() as session:
        return {e.event_id: e for e in session.scalars(select(Event))}


def outbox_rows() -> list[OutboxMessage]:
    with read_session() as session:
        return list(session.scalars(select(OutboxMessage)))


def all_processed(expected: set[str]) -> bool:
    events = stored_events()
    if not expected <= set(events) or any(events[e].processed_at is None for e in expected):
        return False
    return all(row.done_at is not None for row in outbox_rows())


@pytest.mark.slow
def test_sigkill_of_gunicorn_mid_stream_loses_no_accepted_event(test_env, db, make_key, start_worker):
    key = make_key("event:create")
    server = Gunicorn(test_env, workers=2).wait_ready()
    accepted: dict[str, str] = {}
    failed: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def stream(thread: int) -> None:
        n = 0
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                event_id = f"crash-{thread}-{n}"
                n += 1
                try:
                    response = client.post(f"{server.url}/api/v1/events/sentinel",
                                           json=dict(SENTINEL, event_id=event_id, title=f"Crash {n % 7}"),
                                           headers={"X-API-Key": key})
                except httpx.HTTPError:
                    with lock:
                        failed.append(event_id)
                    time.sleep(0.01)
                    continue
                if response.status_code == 202:
                    with lock:
                        accepted[event_id] = response.json()["incident_id"]

    threads = [threading.Thread(target=stream, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(accepted) >= 150, 30, 0.05, "the stream to get going")
        server.kill()  # master and both workers, mid-request
        killed_at = len(accepted)
        wait_for(lambda: len(failed) >= 4, 10, 0.05, "clients to notice the dead server")
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert len(accepted) == killed_at or len(accepted) - killed_at < 10  # answers already on the wire

    # every 202 is in the database, with its incident and an outbox row pointing at it
    events = stored_events()
    missing = set(accepted) - set(events)
    assert not missing, f"{len(missing)} accepted events lost: {sorted(missing)[:5]}"
    for event_id, incident_id in accepted.items():
        assert events[event_id].incident_id == incident_id
    in_outbox = {i for row in outbox_rows() for i in row.payload["event_ids"]}
    assert {events[e].id for e in accepted} <= in_outbox

    # restart the web; it serves again, and a retried event that had committed is a duplicate
    restarted = Gunicorn(test_env, port=server.port, workers=2).wait_ready()
    try:
        retry_id = next(iter(accepted))
        again = httpx.post(f"{restarted.url}/api/v1/events/sentinel", timeout=10, headers={"X-API-Key": key},
                           json=dict(SENTINEL, event_id=retry_id, title="whatever"))
        assert again.status_code == 200 and again.json()["incident_id"] == accepted[retry_id]
        fresh = httpx.post(f"{restarted.url}/api/v1/events/sentinel", timeout=10, headers={"X-API-Key": key},
                           json=dict(SENTINEL, event_id="after-restart"))
        assert fresh.status_code == 202
    finally:
        restarted.stop()

    # a worker and the relay (beat) finish everything, including what was committed but never handed over
    start_worker(beat=True)
    expected = set(accepted) | {"after-restart"}
    wait_for(lambda: all_processed(expected), 45, 0.5, "every accepted event to be processed")


@pytest.mark.slow
def test_event_committed_while_the_broker_is_unreachable_is_relayed_later(test_env, db, make_key, start_worker):
    """The web can't reach Redis at all (broker and cache): events are still accepted (they are
    durable in Postgres) and the outbox relay, run by beat, hands them to the pipeline later."""
    key = make_key("event:create", rate_limit=0)
    dead = "redis://127.0.0.1:9/0"
    server = Gunicorn(test_env, workers=1, extra_env={"REDIS_URL": dead, "CELERY_BROKER_URL": dead}).wait_ready()
    try:
        ids = []
        for i in range(3):
            response = httpx.post(f"{server.url}/api/v1/events/sentinel", timeout=30, headers={"X-API-Key": key},
                                  json=dict(SENTINEL, event_id=f"nobroker-{i}"))
            assert response.status_code == 202
            ids.append(f"nobroker-{i}")
    finally:
        server.stop()
    assert "pipeline dispatch failed" in server.log_path.read_text()
    assert all(row.done_at is None and row.attempts == 0 for row in outbox_rows())
    assert redis_lib.Redis.from_url(test_env["REDIS_URL"]).llen("im:pipeline:pending") == 0

    start_worker(beat=True)
    wait_for(lambda: all_processed(set(ids)), 45, 0.5, "the relay to deliver what the broker never got")
    assert all(row.attempts >= 1 for row in outbox_rows())  # it went through the relay


@pytest.mark.slow
def test_lost_redis_list_is_recovered_by_the_relay(client, make_key, test_env, start_worker):
    key = make_key("event:create")
    for i in range(3):
        response = client.post("/api/v1/events/sentinel", json=dict(SENTINEL, event_id=f"lost-{i}"),
                               headers={"X-API-Key": key})
        assert response.status_code == 202
    broker = redis_lib.Redis.from_url(test_env["REDIS_URL"])
    wait_for(lambda: broker.llen("im:pipeline:pending") >= 1, 10, 0.05, "the background hand-off")
    # Redis loses the hand-off: the pending ids and the queued drain task are gone
    lost = [k for k in broker.keys("pipeline*")] + [b"im:pipeline:pending", b"im:pipeline:drain-scheduled"]
    broker.delete(*lost)
    start_worker(beat=True)
    wait_for(lambda: all_processed({f"lost-{i}" for i in range(3)}), 45, 0.5, "the relay to re-send lost work")
