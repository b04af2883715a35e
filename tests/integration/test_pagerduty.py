"""PagerDuty Events API v2 inbound, against the real web process: trigger → acknowledge → resolve
on one dedup key, answered as PagerDuty answers."""

from __future__ import annotations

from typing import Iterator

import httpx
import pytest
from sqlalchemy import func, select

from app.adapters.db import read_session
from app.adapters.models import Event, Incident
from tests.integration.test_ws import running_web


@pytest.fixture(scope="module")
def web(test_env: dict[str, str]) -> Iterator[str]:
    with running_web() as base:
        yield base


@pytest.fixture
def url(web: str, db: None) -> str:
    return f"{web}/api/v1/integrations/pagerduty/enqueue"


def guide_event(routing_key: str, action: str = "trigger", **extra: object) -> dict:
    """The guide's PagerDuty event format (§6), pointed at us."""
    return {
        "routing_key": routing_key,
        "event_action": action,
        "payload": {
            "summary": "P1: Latency Spike Detected", "source": "llm-sentinel", "severity": "critical",
            "timestamp": "2025-11-11T10:30:00Z",
            "custom_details": {"incident_id": "INC-20251111-00042", "category": "performance",
                               "resource": "/v1/chat/completions",
                               "metrics": {"p95_latency_ms": 5400, "threshold_ms": 2000}},
        },
        "links": [{"href": "https://incidents.example.com/incidents/INC-20251111-00042", "text": "View Incident"}],
        **extra,
    }


def incident() -> Incident:
    with read_session() as session:
        return session.scalars(select(Incident)).one()


def counts() -> tuple[int, int]:
    with read_session() as session:
        return (session.scalar(select(func.count()).select_from(Event)) or 0,
                session.scalar(select(func.count()).select_from(Incident)) or 0)


def test_trigger_acknowledge_resolve_on_one_dedup_key(url, make_key):
    key = make_key("event:create")
    answer = httpx.post(url, json=guide_event(key, dedup_key="latency-chat-api"), timeout=10)
    assert answer.status_code == 202
    body = answer.json()
    assert {k: body[k] for k in ("status", "message", "dedup_key")} == {
        "status": "success", "message": "Event processed", "dedup_key": "latency-chat-api"}
    opened = incident()
    assert (opened.status, opened.severity, opened.category, opened.source) == ("NEW", "P0", "performance", "pagerduty")
    assert body["incident_id"] == opened.id
    with read_session() as session:
        stored = session.scalars(select(Event)).one().payload
    assert "routing_key" not in stored and stored["payload"]["summary"] == "P1: Latency Spike Detected"

    # A repeated trigger joins the same incident (PagerDuty de-duplicates on dedup_key too).
    assert httpx.post(url, json=guide_event(key, dedup_key="latency-chat-api"), timeout=10).status_code == 202
    assert counts() == (2, 1) and incident().event_count == 2

    ack = httpx.post(url, json={"routing_key": key, "event_action": "acknowledge", "dedup_key": "latency-chat-api"},
                     timeout=10)
    assert ack.status_code == 202 and ack.json()["dedup_key"] == "latency-chat-api"
    assert (incident().status, incident().acknowledged_by) == ("ACKNOWLEDGED", "pagerduty")
    # Acknowledging twice is fine, as on PagerDuty.
    assert httpx.post(url, json={"routing_key": key, "event_action": "acknowledge",
                                 "dedup_key": "latency-chat-api"}, timeout=10).status_code == 202

    done = httpx.post(url, json={"routing_key": key, "event_action": "resolve", "dedup_key": "latency-chat-api"},
                      timeout=10)
    assert done.status_code == 202 and done.json()["status"] == "success"
    assert (incident().status, incident().resolved_by) == ("RESOLVED", "pagerduty")

    # A new trigger on the key after resolution opens a new incident.
    again = httpx.post(url, json=guide_event(key, dedup_key="latency-chat-api"), timeout=10).json()
    assert again["incident_id"] != opened.id


def test_trigger_without_dedup_key_gets_one_and_header_auth_works(url, make_key):
    key = make_key("event:create")
    event = guide_event("")
    del event["routing_key"]
    answer = httpx.post(url, json=event, headers={"X-API-Key": key}, timeout=10)
    assert answer.status_code == 202 and len(answer.json()["dedup_key"]) == 32
    resolve = httpx.post(url, json={"event_action": "resolve", "dedup_key": answer.json()["dedup_key"]},
                         headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert resolve.status_code == 202 and incident().status == "RESOLVED"


def test_acknowledge_of_unknown_key_is_accepted_and_changes_nothing(url, make_key):
    key = make_key("event:create")
    answer = httpx.post(url, json={"routing_key": key, "event_action": "acknowledge", "dedup_key": "nothing-open"},
                        timeout=10)
    assert answer.status_code == 202 and answer.json()["incident_id"] is None
    assert counts() == (0, 0)


def test_bad_events_are_refused_and_write_nothing(url, make_key):
    key = make_key("event:create")
    reader = make_key("incident:read")
    cases = [
        ({"routing_key": key, "event_action": "page", "dedup_key": "k"}, 400, "event_action"),
        ({"routing_key": key, "event_action": "resolve"}, 400, "dedup_key"),
        ({**guide_event(key), "payload": {"summary": "x", "source": "y", "severity": "P1"}}, 400, "payload.severity"),
        ({**guide_event(key), "payload": {"source": "y", "severity": "info"}}, 400, "payload.summary"),
        (guide_event("im_00000000_nopenopenopenopenopenopenope"), 401, None),
        ({k: v for k, v in guide_event(key).items() if k != "routing_key"}, 401, None),
        (guide_event(reader), 403, None),
    ]
    for body, status, field in cases:
        response = httpx.post(url, json=body, timeout=10)
        assert response.status_code == status, (body, response.text)
        payload = response.json()
        assert set(payload["error"]) == {"code", "message", "details"}
        if field:
            assert payload["status"] == "invalid event" and field in payload["error"]["details"]
            assert any(e.startswith(field) for e in payload["errors"])
    malformed = httpx.post(url, content=b"{nope", headers={"Content-Type": "application/json"}, timeout=10)
    assert malformed.status_code == 400
    assert counts() == (0, 0)
