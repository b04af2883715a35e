"""Delivery records sent through their channel: sent with the idempotency key the receiver sees,
stale when the incident moved on, retried then dead-lettered, and a worker killed mid-send sends
the step again (real workers and beat, a real receiver on loopback)."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import select, update
from werkzeug import Request, Response

from app.adapters.db import read_session, unit_of_work
from app.adapters.escalation_models import NotificationDelivery, User
from app.adapters.models import DeadLetter, Incident
from app.services.deliveries import Page, delivery_rows, insert_deliveries
from app.services.notifications import deliver, dispatch_due
from tests.conftest import wait_for

HOOK = "/pager-hook"


@pytest.fixture
def setup(outbound_config, httpserver: HTTPServer, client, make_key, monkeypatch):
    outbound_config({
        "notifications": {"http": {"allow_private": ["127.0.0.1/32"], "max_attempts": 1}},
        "integrations": {"webhooks": [{
            "name": "pager-hook", "url": f"http://127.0.0.1:{httpserver.port}{HOOK}",
            "triggers": [{"event": "escalated"}], "timeout_ms": 30_000, "retry": {"max_attempts": 1}}]}})
    monkeypatch.setenv("NOTIFICATION_LEASE_SECS", "3")
    response = client.post("/api/v1/incidents", headers={"X-API-Key": make_key("incident:write")},
                           json={"title": "Latency Spike Detected", "severity": "P1", "source": "llm-sentinel"})
    incident_id = response.get_json()["id"]
    now = datetime.now(timezone.utc)
    with unit_of_work() as session:
        session.add(User(name="alice", email="alice@example.com", contact={"webhook": "pager-hook"}))
        session.execute(update(Incident).where(Incident.id == incident_id).values(escalation_token="tok-1"))
        insert_deliveries(session, delivery_rows(incident_id, "tok-1", "c0.l1", 1,
                                                 [Page("alice", "user", "alice", "direct")], ["webhook"],
                                                 {"policy": "p"}, now))
    with read_session() as session:
        delivery_id = session.scalars(select(NotificationDelivery.id)).one()
    return incident_id, delivery_id


def record(delivery_id: int) -> NotificationDelivery:
    with read_session() as session:
        return session.get(NotificationDelivery, delivery_id)


def hits(server: HTTPServer) -> list[Request]:
    return [r for r, _ in server.log if r.path == HOOK]


def test_a_record_is_sent_once_with_its_idempotency_key(setup, httpserver: HTTPServer):
    incident_id, delivery_id = setup
    httpserver.expect_request(HOOK).respond_with_data("", status=204)
    assert deliver(delivery_id)["status"] == "sent"
    row = record(delivery_id)
    assert row.status == "sent" and row.attempts == 1 and row.last_error is None
    assert row.reason["delivery"]["response_code"] == 204 and row.reason["policy"] == "p"
    [request] = hits(httpserver)
    assert request.headers["Idempotency-Key"] == f"{incident_id}:c0.l1:alice:webhook"
    body = request.get_json()
    assert body["event_type"] == "escalated" and body["incident"]["id"] == incident_id
    assert deliver(delivery_id)["status"] == "sent" and len(hits(httpserver)) == 1  # a replayed task sends nothing


def test_the_records_over_rest(setup, httpserver: HTTPServer, client, make_key):
    incident_id, delivery_id = setup
    httpserver.expect_request(HOOK).respond_with_data("", status=202)
    deliver(delivery_id)
    headers = {"X-API-Key": make_key("incident:read")}
    body = client.get(f"/api/v1/incidents/{incident_id}/notifications", headers=headers).get_json()
    [item] = body["items"]
    assert body["incident_id"] == incident_id and item["id"] == delivery_id and item["status"] == "sent"
    assert item["channel"] == "webhook" and item["attempts"] == 1 and item["reason"]["delivery"]["response_code"] == 202
    assert client.get("/api/v1/incidents/INC-20990101-00001/notifications", headers=headers).status_code == 404
    assert client.get(f"/api/v1/incidents/{incident_id}/notifications").status_code == 401


def test_a_record_of_a_step_the_incident_left_is_stale(setup, httpserver: HTTPServer):
    incident_id, delivery_id = setup
    with unit_of_work() as session:  # acknowledged: the escalation token is gone
        session.execute(update(Incident).where(Incident.id == incident_id).values(escalation_token=None))
    assert deliver(delivery_id)["status"] == "stale"
    row = record(delivery_id)
    assert row.status == "stale" and "acknowledged" in row.last_error and hits(httpserver) == []


def test_failures_retry_at_a_later_time_then_dead_letter(setup, httpserver: HTTPServer, monkeypatch):
    _, delivery_id = setup
    monkeypatch.setenv("NOTIFICATION_MAX_ATTEMPTS", "2")
    httpserver.expect_request(HOOK).respond_with_data("down", status=503)
    assert deliver(delivery_id)["status"] == "retrying"
    row = record(delivery_id)
    assert row.status == "pending" and row.attempts == 1 and "HTTP 503" in row.last_error
    assert row.next_attempt_at > datetime.now(timezone.utc)
    assert dispatch_due() == []  # not due yet
    with unit_of_work() as session:
        session.execute(update(NotificationDelivery).values(next_attempt_at=datetime.now(timezone.utc)))
    [(claimed, lease)] = dispatch_due()
    assert deliver(claimed, lease)["status"] == "failed"
    row = record(delivery_id)
    assert row.status == "failed" and row.attempts == 2 and row.reason["delivery"]["response_code"] == 503
    with read_session() as session:
        [dead] = session.scalars(select(DeadLetter)).all()
    assert dead.task_name == "notifications.deliver" and dead.args == [delivery_id] and dead.kwargs == {"replay": True}
    # the operator's replay after the receiver recovered
    httpserver.clear()
    httpserver.expect_request(HOOK).respond_with_data("", status=200)
    assert deliver(delivery_id, replay=True)["status"] == "sent"


def test_an_open_breaker_postpones_without_spending_attempts(setup, httpserver: HTTPServer):
    from app.services import circuit_breakers

    _, delivery_id = setup
    circuit_breakers.force_open("pager-hook", actor="test")
    result = deliver(delivery_id)
    assert result["status"] == "retrying" and "forced open" in result["error"]
    row = record(delivery_id)
    assert row.status == "pending" and row.attempts == 0 and hits(httpserver) == []


def test_a_duplicate_task_does_not_send_while_another_holds_the_lease(setup, httpserver: HTTPServer):
    _, delivery_id = setup
    httpserver.expect_request(HOOK).respond_with_data("", status=204)
    [(claimed, lease)] = dispatch_due()
    assert deliver(claimed, "2000-01-01T00:00:00+00:00")["status"] == "held"  # a stale message
    assert deliver(claimed, lease)["status"] == "sent"
    assert len(hits(httpserver)) == 1


@pytest.mark.slow
def test_a_worker_killed_mid_send_sends_the_step_again(setup, httpserver: HTTPServer, start_worker, monkeypatch):
    incident_id, delivery_id = setup
    monkeypatch.setenv("NOTIFICATIONS_DISPATCH_SECS", "0.5")
    arrived, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def receiver(request: Request) -> Response:
        seen.append(request.headers["Idempotency-Key"])
        if len(seen) == 1:
            arrived.set()
            release.wait(60)  # hold the first call open while its worker dies
        return Response("", status=204)

    httpserver.expect_request(HOOK).respond_with_handler(receiver)
    first = start_worker(queues="notifications", concurrency=1, beat=True)
    assert arrived.wait(60), "the first worker never called the receiver"
    first.kill()
    release.set()
    assert record(delivery_id).status == "pending"  # the send never finished: nothing recorded as sent
    start_worker(queues="notifications", concurrency=1, beat=True)

    def sent() -> Any:
        row = record(delivery_id)
        return row if row.status == "sent" else None

    row = wait_for(sent, timeout=90, message="the step to be sent again")
    assert row.attempts == 2
    assert seen == [f"{incident_id}:c0.l1:alice:webhook"] * 2  # the same key: the receiver can drop the repeat
