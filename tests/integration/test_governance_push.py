"""Governance audit push against a real loopback receiver: the guide's §5 event shape, X-API-Key,
batching by max_batch_size and max_wait_ms, and nothing lost when the receiver fails."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import redis as redis_lib
from pytest_httpserver import HTTPServer

from app.adapters.http_client import DeliveryError
from app.services import incidents
from app.services.audit_push import CURSOR_KEY, push_due


@pytest.fixture
def audit(outbound_config, httpserver: HTTPServer, test_env, db):
    redis_lib.Redis.from_url(test_env["REDIS_URL"]).delete(CURSOR_KEY)

    def configure(batching: dict) -> None:
        outbound_config({
            "notifications": {"http": {"allow_private": ["127.0.0.1/32"], "backoff_initial_secs": 0.01,
                                       "max_attempts": 1}},
            "integrations": {"llm-governance-core": {"enabled": True, "audit": {
                "endpoint": f"http://127.0.0.1:{httpserver.port}/api/v1/audit-events",
                "authentication": {"type": "api_key", "api_key": "g0v-key"},
                "push_events": ["incident_created", "incident_resolved", "incident_closed", "sla_breached",
                                "escalated"],
                "batching": batching}}}})

    return configure


def bodies(server: HTTPServer) -> list:
    return [r.get_json() for r, _ in server.log if r.path == "/api/v1/audit-events"]


def later(seconds: float) -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


def make_incidents(client, make_key, count: int) -> list[str]:
    key = make_key("incident:write")
    ids = []
    for i in range(count):
        response = client.post("/api/v1/incidents", headers={"X-API-Key": key},
                               json={"title": f"Latency Spike {i}", "severity": "P1", "source": "llm-sentinel"})
        assert response.status_code == 201
        ids.append(response.get_json()["id"])
    return ids


def test_unbatched_events_are_the_guides_shape(audit, client, make_key, httpserver: HTTPServer):
    audit({"enabled": False})
    httpserver.expect_request("/api/v1/audit-events", method="POST", headers={"X-API-Key": "g0v-key"}) \
        .respond_with_json({"status": "accepted"}, status=202)
    [incident_id] = make_incidents(client, make_key, 1)
    incidents.acknowledge(incident_id, "john.doe")
    incidents.resolve(incident_id, "john.doe")
    assert push_due(later(5)) == {"status": "ok", "pushed": 2, "batches": 2}
    created, resolved = bodies(httpserver)
    assert created["event_type"] == "incident_created" and created["incident_id"] == incident_id
    assert created["actor"] == {"type": "system", "id": "system-llm-sentinel", "name": "llm-sentinel"}
    assert set(resolved) == {"event_id", "timestamp", "event_type", "incident_id", "actor", "changes"}
    assert resolved["event_type"] == "incident_resolved" and resolved["incident_id"] == incident_id
    assert resolved["event_id"].startswith(f"audit-{datetime.now(timezone.utc).year}-")
    assert resolved["timestamp"].endswith("Z")
    assert resolved["actor"] == {"type": "user", "id": "user-john.doe", "name": "john.doe"}
    assert resolved["changes"] == [{"field": "status", "old_value": "ACKNOWLEDGED", "new_value": "RESOLVED"}]
    assert push_due(later(5))["pushed"] == 0  # the cursor moved: nothing is sent twice


def test_batches_by_size_then_by_age(audit, client, make_key, httpserver: HTTPServer):
    audit({"enabled": True, "max_batch_size": 2, "max_wait_ms": 60_000})
    httpserver.expect_request("/api/v1/audit-events").respond_with_json({"status": "accepted"}, status=202)
    make_incidents(client, make_key, 3)
    assert push_due(later(5))["pushed"] == 2  # one full batch; the third waits for company
    assert push_due(later(30))["pushed"] == 0
    assert push_due(later(65))["pushed"] == 1  # max_wait_ms passed
    first, second = bodies(httpserver)
    assert [e["event_type"] for e in first["events"]] == ["incident_created", "incident_created"]
    assert len(second["events"]) == 1
    ids = [e["event_id"] for e in first["events"] + second["events"]]
    assert len(set(ids)) == 3


def test_a_failed_push_is_sent_again(audit, client, make_key, httpserver: HTTPServer):
    audit({"enabled": True, "max_batch_size": 10, "max_wait_ms": 1})
    httpserver.expect_ordered_request("/api/v1/audit-events").respond_with_data("down", status=503)
    httpserver.expect_ordered_request("/api/v1/audit-events").respond_with_json({"status": "accepted"}, status=202)
    make_incidents(client, make_key, 2)
    with pytest.raises(DeliveryError):
        push_due(later(5))
    assert push_due(later(5))["pushed"] == 2
    failed, accepted = bodies(httpserver)
    assert failed == accepted  # the same events, the same ids
