"""Incident lifecycle notifications against real loopback receivers: webhooks hear created /
acknowledged / resolved with the guide's payload; PagerDuty acknowledge and resolve on the trigger's
dedup_key; Slack chat.update of the posted message; JIRA issue creation, a comment on resolve, and
the two-way sync (Done resolves the incident, without echoing back to JIRA)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import select, update
from werkzeug import Request

from app.adapters.db import read_session, unit_of_work
from app.adapters.escalation_models import NotificationDelivery, User
from app.adapters.models import Incident, OutboxMessage
from app.services import pipeline
from app.services.deliveries import Page, delivery_rows, insert_deliveries
from app.services.jira_sync import poll
from app.services.notifications import deliver_due

HOOK, PD, JIRA_ISSUE, JIRA_SEARCH = "/hook", "/pd/enqueue", "/rest/api/3/issue", "/rest/api/3/search"
KEY = "R" * 32


def at(server: HTTPServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def received(server: HTTPServer, path: str) -> list[Request]:
    return [request for request, _ in server.log if request.path == path]


@pytest.fixture
def configured(outbound_config, httpserver: HTTPServer) -> HTTPServer:
    outbound_config({
        "notifications": {
            "http": {"allow_private": ["127.0.0.1/32"], "max_attempts": 1},
            "incident_url_template": "https://incidents.example.com/incidents/{id}",
            "pagerduty": {"enabled": True, "integration_key": KEY, "events_url": at(httpserver, PD)},
            "slack": {"enabled": True, "bot_token": "xoxb-test", "api_url": at(httpserver, "/slack"),
                      "channel_routing": [{"default": "#incidents"}]}},
        "integrations": {
            "webhooks": [{"name": "lifecycle-hook", "url": at(httpserver, HOOK), "retry": {"max_attempts": 1},
                          "triggers": [{"event": "incident_created", "conditions": {"severity": ["P0", "P1"]}},
                                       {"event": "incident_acknowledged"}, {"event": "incident_resolved"}]}],
            "jira": {"enabled": True, "base_url": at(httpserver, ""),
                     "authentication": {"type": "basic", "username": "bot@example.com", "api_token": "tok3n"},
                     "project_mapping": [{"default": None, "project_key": "OPS", "issue_type": "Incident"}],
                     "sync": {"enabled": True, "bidirectional": True, "sync_interval_seconds": 300}}},
        "circuit_breakers": {"slack": {"rate_limit": {"requests_per_minute": 0}},
                             "pagerduty": {"rate_limit": {"requests_per_minute": 0}}}})
    httpserver.expect_request(HOOK).respond_with_data("", status=204)
    httpserver.expect_request(PD).respond_with_json({"status": "success", "dedup_key": "x"}, status=202)
    httpserver.expect_request("/slack/chat.postMessage").respond_with_json(
        {"ok": True, "channel": "C0INC", "ts": "1731321000.000100"})
    httpserver.expect_request("/slack/chat.update").respond_with_json({"ok": True})
    return httpserver


def create(client: Any, key: str, severity: str = "P1", title: str = "Latency Spike Detected") -> str:
    """A manual incident, run through the pipeline in-process (the created records are its)."""
    response = client.post("/api/v1/incidents", headers={"X-API-Key": key}, json={
        "title": title, "severity": severity, "source": "llm-sentinel", "category": "performance",
        "description": "95th percentile latency exceeded threshold by 270%"})
    assert response.status_code == 201, response.get_data(as_text=True)
    with read_session() as session:
        outbox = list(session.scalars(select(OutboxMessage.id).where(OutboxMessage.done_at.is_(None))))
    pipeline.process_outbox(outbox)
    return str(response.get_json()["id"])


def send_all() -> dict[str, Any]:
    return deliver_due(budget_secs=30)


def bodies(server: HTTPServer, path: str) -> list[Any]:
    return [json.loads(r.get_data()) for r in received(server, path)]


def test_webhooks_hear_created_acknowledged_and_resolved(configured, client, make_key):
    server, key = configured, make_key("incident:write", "incident:read")
    incident_id = create(client, key)
    create(client, key, severity="P3", title="Minor thing")  # the created trigger wants P0/P1 only
    send_all()
    [created] = received(server, HOOK)
    assert created.headers["Idempotency-Key"] == f"{incident_id}:created:lifecycle-hook:webhook"
    assert created.headers["X-Incident-Manager-Event"] == "incident_created"
    body = json.loads(created.get_data())
    assert body == {"event_type": "incident_created", "timestamp": body["timestamp"], "incident": {
        "id": incident_id, "title": "Latency Spike Detected", "severity": "P1", "status": "NEW",
        "url": f"https://incidents.example.com/incidents/{incident_id}"}}
    assert client.post(f"/api/v1/incidents/{incident_id}/acknowledge", headers={"X-API-Key": key},
                       json={}).status_code == 200
    send_all()
    assert client.post(f"/api/v1/incidents/{incident_id}/resolve", headers={"X-API-Key": key},
                       json={"notes": "scaled out"}).status_code == 200
    send_all()
    events = [(b["event_type"], b["incident"]["status"]) for b in bodies(server, HOOK)]
    assert events == [("incident_created", "NEW"), ("incident_acknowledged", "ACKNOWLEDGED"),
                      ("incident_resolved", "RESOLVED")]
    keys = [r.headers["Idempotency-Key"] for r in received(server, HOOK)]
    assert keys[1].startswith(f"{incident_id}:acknowledged.") and keys[2].startswith(f"{incident_id}:resolved.")
    items = client.get(f"/api/v1/incidents/{incident_id}/notifications", headers={"X-API-Key": key}).get_json()
    hooks = [i for i in items["items"] if i["channel"] == "webhook"]
    assert [(i["status"], i["response_code"], i["reason"]["event"]) for i in hooks] == [
        ("sent", 204, "incident_created"), ("sent", 204, "incident_acknowledged"), ("sent", 204, "incident_resolved")]
    send_all()
    assert len(received(server, HOOK)) == 3  # nothing is sent twice


def _page(incident_id: str, channels: tuple[str, ...] = ("pagerduty", "slack")) -> None:
    """An escalation step paging alice through `channels` (as the escalation engine writes it)."""
    now = datetime.now(timezone.utc)
    with unit_of_work() as session:
        session.add(User(name="alice", email="alice@example.com"))
        session.execute(update(Incident).where(Incident.id == incident_id).values(escalation_token="tok-1"))
        insert_deliveries(session, delivery_rows(incident_id, "tok-1", "c0.l1", 1,
                                                 [Page("alice", "user", "alice", "direct")], list(channels), {}, now))


def test_pagerduty_and_slack_mirror_acknowledge_and_resolve(configured, client, make_key):
    server, key = configured, make_key("incident:write", "incident:read")
    incident_id = create(client, key)
    _page(incident_id)
    send_all()
    [trigger] = bodies(server, PD)
    assert trigger["event_action"] == "trigger" and trigger["dedup_key"] == incident_id
    [posted] = bodies(server, "/slack/chat.postMessage")
    assert posted["channel"] == "#incidents"
    client.post(f"/api/v1/incidents/{incident_id}/acknowledge", headers={"X-API-Key": key}, json={})
    send_all()
    client.post(f"/api/v1/incidents/{incident_id}/resolve", headers={"X-API-Key": key}, json={})
    send_all()
    assert bodies(server, PD)[1:] == [
        {"routing_key": KEY, "event_action": "acknowledge", "dedup_key": incident_id},
        {"routing_key": KEY, "event_action": "resolve", "dedup_key": incident_id}]
    updates = bodies(server, "/slack/chat.update")
    assert [(u["channel"], u["ts"]) for u in updates] == [("C0INC", "1731321000.000100")] * 2
    statuses = [u["blocks"][1]["fields"][1]["text"] for u in updates]
    assert statuses == ["*Status:*\nACKNOWLEDGED", "*Status:*\nRESOLVED"]
    assert all(all(e.get("action_id") != "acknowledge_incident" for e in u["blocks"][3]["elements"])
               for u in updates)  # nothing left to acknowledge


def test_an_incident_without_a_page_sends_no_pagerduty_or_slack_update(configured, client, make_key):
    server, key = configured, make_key("incident:write")
    incident_id = create(client, key)
    client.post(f"/api/v1/incidents/{incident_id}/resolve", headers={"X-API-Key": key}, json={})
    send_all()
    assert received(server, PD) == [] and received(server, "/slack/chat.update") == []


def test_jira_issue_comment_and_two_way_sync_without_echo(configured, client, make_key):
    server, key = configured, make_key("incident:write", "incident:read")
    first: list[str] = []  # the first incident's id: its issue is OPS-1 (the two are sent side by side)

    def create_issue(request: Request) -> Any:
        from werkzeug import Response

        issue_key = "OPS-1" if first[0] in json.loads(request.get_data())["fields"]["summary"] else "OPS-2"
        return Response(json.dumps({"id": "1000" + issue_key[-1], "key": issue_key}), status=201,
                        content_type="application/json")

    server.expect_request(JIRA_ISSUE, method="POST").respond_with_handler(create_issue)
    server.expect_request(f"{JIRA_ISSUE}/OPS-2/comment").respond_with_json({"id": "555"}, status=201)
    synced = create(client, key)
    first.append(synced)
    resolved_here = create(client, key, title="Second")
    send_all()
    created = sorted(bodies(server, JIRA_ISSUE), key=lambda c: c["fields"]["summary"])
    assert [c["fields"]["summary"] for c in created] == [f"[{synced}] Latency Spike Detected",
                                                          f"[{resolved_here}] Second"]
    assert created[0]["fields"]["customfield_10001"] == synced and created[0]["fields"]["project"] == {"key": "OPS"}

    # resolved here: a comment on its issue
    client.post(f"/api/v1/incidents/{resolved_here}/resolve", headers={"X-API-Key": key},
                json={"notes": "rolled back"})
    send_all()
    [comment] = bodies(server, f"{JIRA_ISSUE}/OPS-2/comment")
    text = comment["body"]["content"]
    assert comment["body"]["type"] == "doc" and text[0]["content"][0]["text"].startswith(
        f"Incident {resolved_here} was resolved in the incident manager by ")
    assert text[1]["content"][0]["text"] == "rolled back"

    # Done in JIRA: the incident resolves, and nothing goes back to JIRA
    server.expect_request(JIRA_SEARCH, method="POST").respond_with_json({"startAt": 0, "maxResults": 100, "total": 2,
                                                                         "issues": [
        {"key": "OPS-1", "fields": {"status": {"name": "Done"}, "customfield_10001": synced}},
        {"key": "OPS-9", "fields": {"status": {"name": "In Progress"}, "customfield_10001": "INC-20990101-00001"}}]})
    assert poll(force=True) == {"status": "ok", "seen": 2, "changed": 1}
    [search] = bodies(server, JIRA_SEARCH)
    assert search["jql"].startswith('cf[10001] is not EMPTY AND updated >= "') and search["jql"].endswith(
        '" ORDER BY updated ASC')
    assert set(search["fields"]) == {"status", "updated", "customfield_10001"}
    assert received(server, JIRA_SEARCH)[0].headers["Authorization"].startswith("Basic ")
    incident = client.get(f"/api/v1/incidents/{synced}", headers={"X-API-Key": key}).get_json()
    assert incident["status"] == "RESOLVED" and incident["resolution"]["resolved_by"] == "jira:OPS-1"
    assert incident["resolution"]["method"] == "JIRA"
    send_all()
    assert received(server, f"{JIRA_ISSUE}/OPS-1/comment") == []  # no echo back to JIRA
    assert [b["event_type"] for b in bodies(server, HOOK)][-1] == "incident_resolved"  # others still hear it
    assert poll(force=True)["changed"] == 0  # the same issue seen again changes nothing twice
    assert poll() == {"status": "not_due"}  # sync_interval_seconds since the last poll
    with read_session() as session:
        jira_rows = list(session.scalars(select(NotificationDelivery.status).where(
            NotificationDelivery.channel == "jira")))
    assert jira_rows == ["sent", "sent", "sent"]  # two issues, one comment


def _pagerduty_recorder(server: HTTPServer, incident_id: str, fail_first_trigger: int) -> list[str]:
    """PagerDuty's events endpoint recording each event's action in arrival order. The first
    `fail_first_trigger` triggers are answered 500 with Retry-After: 1 (a retry comes a second
    later); while the first is in flight the incident is acknowledged in the incident manager (the
    on-call pressed Acknowledge elsewhere), unless `incident_id` is "none"."""
    from werkzeug import Response

    from app.services import incidents

    actions: list[str] = []

    def handler(request: Request) -> Response:
        action = json.loads(request.get_data())["event_action"]
        actions.append(action)
        if action == "trigger" and actions.count("trigger") <= fail_first_trigger:
            if actions.count("trigger") == 1 and incident_id != "none":
                incidents.acknowledge(incident_id, "alice")
            return Response(json.dumps({"status": "error"}), status=500, headers={"Retry-After": "1"},
                            content_type="application/json")
        return Response(json.dumps({"status": "success", "dedup_key": incident_id}), status=202,
                        content_type="application/json")

    server.expect_request(PD).respond_with_handler(handler)
    return actions


def _pagerduty_config(outbound_config: Any, server: HTTPServer, http_attempts: int) -> None:
    outbound_config({
        "notifications": {"http": {"allow_private": ["127.0.0.1/32"], "max_attempts": http_attempts,
                                   "backoff_initial_secs": 0.01},
                          "pagerduty": {"enabled": True, "integration_key": KEY, "events_url": at(server, PD)}},
        "circuit_breakers": {"pagerduty": {"rate_limit": {"requests_per_minute": 0}}}})


def _pagerduty_page(incident_id: str) -> None:
    _page(incident_id, ("pagerduty",))


def _pagerduty_rows(incident_id: str) -> list[tuple[str, str]]:
    with read_session() as session:
        return [(r.step.split(".")[0], r.status) for r in session.scalars(
            select(NotificationDelivery).where(NotificationDelivery.incident_id == incident_id,
                                               NotificationDelivery.channel == "pagerduty")
            .order_by(NotificationDelivery.id))]


def test_pagerduty_acknowledge_waits_for_an_in_flight_trigger_that_is_retried(
        outbound_config, httpserver, client, make_key):
    """The acknowledge is written while the trigger is in flight; the trigger's first attempt fails
    and is retried a second later. The delivery run keeps claiming meanwhile, and the acknowledge
    (its own record) would overtake the retry: it waits until the trigger's record is done."""
    _pagerduty_config(outbound_config, httpserver, http_attempts=2)
    incident_id = create(client, make_key("incident:write"))
    actions = _pagerduty_recorder(httpserver, incident_id, fail_first_trigger=1)
    _pagerduty_page(incident_id)
    send_all()
    send_all()
    assert actions == ["trigger", "trigger", "acknowledge"]
    assert _pagerduty_rows(incident_id) == [("c0", "sent"), ("acknowledged", "sent")]


def test_pagerduty_acknowledge_after_a_trigger_whose_retry_went_stale(outbound_config, httpserver, client, make_key):
    """The trigger's attempt fails and its record waits for a later retry; meanwhile the incident
    was acknowledged. The acknowledge waits for the trigger's record; the trigger then goes stale
    (no page for an acknowledged incident) and only then does the acknowledge go out: nothing
    reaches PagerDuty out of order."""
    _pagerduty_config(outbound_config, httpserver, http_attempts=1)
    incident_id = create(client, make_key("incident:write"))
    actions = _pagerduty_recorder(httpserver, incident_id, fail_first_trigger=1)
    _pagerduty_page(incident_id)
    send_all()
    assert actions == ["trigger"]
    assert _pagerduty_rows(incident_id) == [("c0", "pending"), ("acknowledged", "pending")]
    send_all()  # the trigger is not due yet (backoff): the acknowledge still waits for it
    assert actions == ["trigger"]
    _trigger_retry_due(incident_id)
    send_all()
    send_all()
    assert actions == ["trigger", "acknowledge"]
    assert _pagerduty_rows(incident_id) == [("c0", "stale"), ("acknowledged", "sent")]



def _trigger_retry_due(incident_id: str) -> None:
    """The PagerDuty trigger's record (step c0.l1) waiting out its backoff: due now."""
    with unit_of_work() as session:
        session.execute(update(NotificationDelivery).where(NotificationDelivery.incident_id == incident_id,
                                                           NotificationDelivery.step == "c0.l1")
                        .values(next_attempt_at=datetime.now(timezone.utc)))

def test_pagerduty_acknowledge_of_a_trigger_tried_before_and_waiting_for_its_retry(
        outbound_config, httpserver, client, make_key):
    """The trigger's attempt timed out or failed (PagerDuty may have it) and waits for its retry
    when the incident is acknowledged: the acknowledge is written (something may have gone out),
    waits for the trigger's record, which goes stale (no page for an acknowledged incident)."""
    from app.services import incidents

    _pagerduty_config(outbound_config, httpserver, http_attempts=1)
    incident_id = create(client, make_key("incident:write"))
    actions = _pagerduty_recorder(httpserver, "none", fail_first_trigger=1)  # fails, acknowledges nothing
    _pagerduty_page(incident_id)
    send_all()
    assert _pagerduty_rows(incident_id) == [("c0", "pending")]
    incidents.acknowledge(incident_id, "alice")
    send_all()
    assert actions == ["trigger"] and _pagerduty_rows(incident_id) == [("c0", "pending"), ("acknowledged", "pending")]
    _trigger_retry_due(incident_id)
    send_all()
    send_all()
    assert actions == ["trigger", "acknowledge"]
    assert _pagerduty_rows(incident_id) == [("c0", "stale"), ("acknowledged", "sent")]
