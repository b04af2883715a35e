"""Delivery records sent through their channel: sent with the idempotency key the receiver sees,
stale when the incident moved on, retried then dead-lettered, exactly once under concurrent runs,
a slow target not holding up the others, and a worker killed mid-send sends the step again (real
workers and beat, real receivers on loopback)."""

from __future__ import annotations

import http.server
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import func, select, update
from werkzeug import Request, Response

from app.adapters.db import read_session, unit_of_work
from app.adapters.escalation_models import NotificationDelivery, User
from app.adapters.models import DeadLetter, Incident
from app.services.deliveries import Page, delivery_rows, insert_deliveries
from app.services.notifications import Released, any_due, claim, deliver, deliver_due, record
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


def row_of(delivery_id: int) -> NotificationDelivery:
    with read_session() as session:
        return session.get(NotificationDelivery, delivery_id)


def hits(server: HTTPServer) -> list[Request]:
    return [r for r, _ in server.log if r.path == HOOK]


def test_a_record_is_sent_once_with_its_idempotency_key(setup, httpserver: HTTPServer):
    incident_id, delivery_id = setup
    httpserver.expect_request(HOOK).respond_with_data("", status=204)
    assert deliver(delivery_id)["status"] == "sent"
    row = row_of(delivery_id)
    assert row.status == "sent" and row.attempts == 1 and row.last_error is None and row.response_code == 204
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
    assert item["channel"] == "webhook" and item["attempts"] == 1 and item["response_code"] == 202
    assert item["reason"]["delivery"]["response_code"] == 202
    assert client.get("/api/v1/incidents/INC-20990101-00001/notifications", headers=headers).status_code == 404
    assert client.get(f"/api/v1/incidents/{incident_id}/notifications").status_code == 401


def test_a_record_of_a_step_the_incident_left_is_stale(setup, httpserver: HTTPServer):
    incident_id, delivery_id = setup
    with unit_of_work() as session:  # acknowledged: the escalation token is gone
        session.execute(update(Incident).where(Incident.id == incident_id).values(escalation_token=None))
    assert deliver(delivery_id)["status"] == "stale"
    row = row_of(delivery_id)
    assert row.status == "stale" and "acknowledged" in row.last_error and hits(httpserver) == []


def test_failures_retry_at_a_later_time_then_dead_letter(setup, httpserver: HTTPServer, monkeypatch):
    _, delivery_id = setup
    monkeypatch.setenv("NOTIFICATION_MAX_ATTEMPTS", "2")
    httpserver.expect_request(HOOK).respond_with_data("down", status=503)
    assert deliver(delivery_id)["status"] == "retrying"
    row = row_of(delivery_id)
    assert row.status == "pending" and row.attempts == 1 and "HTTP 503" in row.last_error
    assert row.next_attempt_at > datetime.now(timezone.utc)
    assert not any_due() and claim() == []  # not due yet
    with unit_of_work() as session:
        session.execute(update(NotificationDelivery).values(next_attempt_at=datetime.now(timezone.utc)))
    assert deliver_due(budget_secs=5)["failed"] == 1
    row = row_of(delivery_id)
    assert row.status == "failed" and row.attempts == 2 and row.response_code == 503
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
    row = row_of(delivery_id)
    assert row.status == "pending" and row.attempts == 0 and hits(httpserver) == []


def test_a_live_claim_is_never_sent_by_another_and_a_late_outcome_is_dropped(setup, httpserver: HTTPServer,
                                                                            monkeypatch):
    _, delivery_id = setup
    httpserver.expect_request(HOOK).respond_with_data("", status=204)
    [first] = claim()
    assert row_of(delivery_id).status == "sending" and row_of(delivery_id).attempts == 1
    assert deliver(delivery_id)["status"] == "held" and claim() == [] and hits(httpserver) == []
    with unit_of_work() as session:  # the first claim's worker died: its lease ran out
        session.execute(update(NotificationDelivery).values(
            next_attempt_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
    [second] = claim()
    assert second.attempts == 2 and second.key == first.key
    # the first worker's late outcome does not overwrite the second claim's record
    record([(first, Released("late"))])
    assert row_of(delivery_id).status == "sending" and row_of(delivery_id).attempts == 2
    assert deliver_due(budget_secs=0)["claimed"] == 0  # the second claim is live: nothing to take
    record([(second, Released("handed back"))])
    row = row_of(delivery_id)
    assert row.status == "pending" and row.attempts == 1  # handed back unsent: the attempt is not spent
    assert deliver(delivery_id)["status"] == "sent" and len(hits(httpserver)) == 1


def _many(incident_id: str, count: int, user: str, prefix: str) -> None:
    now = datetime.now(timezone.utc)
    with unit_of_work() as session:
        rows = delivery_rows(incident_id, "tok-1", "x", 1, [Page(user, "user", user, "direct")], ["webhook"], {}, now)
        insert_deliveries(session, [{**rows[0], "step": f"{prefix}{i}",
                                     "idempotency_key": f"{incident_id}:{prefix}{i}:{user}:webhook"}
                                    for i in range(count)])


def test_concurrent_runs_send_each_record_exactly_once(setup, httpserver: HTTPServer, monkeypatch):
    incident_id, _ = setup
    monkeypatch.setenv("NOTIFICATION_SEND_THREADS", "8")
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def receiver(request: Request) -> Response:
        with lock:
            seen[request.headers["Idempotency-Key"]] += 1
        return Response("", status=204)

    httpserver.expect_request(HOOK).respond_with_handler(receiver)
    _many(incident_id, 400, "alice", "n")
    monkeypatch.setenv("NOTIFICATION_LEASE_SECS", "120")
    runs = [threading.Thread(target=deliver_due, kwargs={"budget_secs": 60}) for _ in range(4)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(120)
    assert len(seen) == 401 and set(seen.values()) == {1}  # 400 + the fixture's record, each once
    with read_session() as session:
        statuses = Counter(session.scalars(select(NotificationDelivery.status)))
        codes = set(session.scalars(select(NotificationDelivery.response_code)))
    assert statuses == {"sent": 401} and codes == {204}


@pytest.fixture
def blocking_server() -> Iterator[tuple[int, threading.Event, list[str]]]:
    """A loopback receiver whose every answer waits until the test releases it (a target that is
    as slow as the test needs)."""
    release, keys = threading.Event(), []

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            keys.append(self.headers["Idempotency-Key"])
            release.wait(60)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], release, keys
    release.set()
    server.shutdown()
    server.server_close()


def test_a_slow_target_does_not_hold_up_the_others(outbound_config, setup, httpserver: HTTPServer,
                                                    blocking_server, monkeypatch):
    incident_id, _ = setup
    slow_port, release, slow_keys = blocking_server
    outbound_config({
        "notifications": {"http": {"allow_private": ["127.0.0.1/32"], "max_attempts": 1}},
        "integrations": {"webhooks": [
            {"name": "pager-hook", "url": f"http://127.0.0.1:{httpserver.port}{HOOK}",
             "triggers": [{"event": "escalated"}], "retry": {"max_attempts": 1}},
            {"name": "slow-hook", "url": f"http://127.0.0.1:{slow_port}/slow",
             "triggers": [{"event": "escalated"}], "timeout_ms": 60_000, "retry": {"max_attempts": 1}}]}})
    # 4 threads in all, 2 per target: without lanes the 10 slow records would take every thread
    monkeypatch.setenv("NOTIFICATION_SEND_THREADS", "4")
    monkeypatch.setenv("NOTIFICATION_TARGET_CONCURRENCY", "2")
    monkeypatch.setenv("NOTIFICATION_LEASE_SECS", "120")
    httpserver.expect_request(HOOK).respond_with_data("", status=204)
    with unit_of_work() as session:
        session.add(User(name="bob", contact={"webhook": "slow-hook"}))
    _many(incident_id, 10, "bob", "s")
    _many(incident_id, 60, "alice", "f")
    run = threading.Thread(target=deliver_due, kwargs={"budget_secs": 60})
    run.start()

    def fast_sent() -> bool:
        with read_session() as session:
            return session.scalar(select(func.count()).where(
                NotificationDelivery.recipient == "alice", NotificationDelivery.status == "sent")) == 61

    wait_for(fast_sent, timeout=60, message="every fast record recorded sent while the slow target hangs")
    assert len(slow_keys) == 2  # the slow lane: two at a time, none of them finished
    with read_session() as session:
        slow = Counter(session.scalars(select(NotificationDelivery.status).where(
            NotificationDelivery.recipient == "bob")))
    assert slow == {"sending": 10}
    release.set()
    run.join(120)
    with read_session() as session:
        slow = Counter(session.scalars(select(NotificationDelivery.status).where(
            NotificationDelivery.recipient == "bob")))
    assert slow == {"sent": 10} and sorted(Counter(slow_keys).values()) == [1] * 10


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
    assert row_of(delivery_id).status == "sending"  # the send never finished: still the dead claim's
    start_worker(queues="notifications", concurrency=1, beat=True)

    def sent() -> Any:
        row = row_of(delivery_id)
        return row if row.status == "sent" else None

    row = wait_for(sent, timeout=90, message="the step to be sent again")
    assert row.attempts == 2
    assert seen == [f"{incident_id}:c0.l1:alice:webhook"] * 2  # the same key: the receiver can drop the repeat
