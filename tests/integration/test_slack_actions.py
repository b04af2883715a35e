"""The Slack Acknowledge button: `POST /api/v1/integrations/slack/actions` signed as Slack signs it
acknowledges the incident as the Slack user; a forged, missing or stale signature answers 401 and
acknowledges nothing. With a bot token, the message is then updated through a real worker."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from urllib.parse import urlencode

from pytest_httpserver import HTTPServer

from app.services.incidents import get_incident
from tests.conftest import wait_for

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


def signed(body: bytes, secret: str = SECRET, at: int | None = None) -> dict[str, str]:
    timestamp = str(int(time.time()) if at is None else at)
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": f"v0={digest}",
            "Content-Type": "application/x-www-form-urlencoded"}


def button_press(incident_id: str, username: str = "jane.doe") -> bytes:
    payload = {"type": "block_actions", "user": {"id": "U0JANE", "username": username, "name": username},
               "container": {"type": "message", "channel_id": "C0CRIT", "message_ts": "1731321000.000100"},
               "actions": [{"type": "button", "action_id": "acknowledge_incident", "value": incident_id,
                            "block_id": "b1", "action_ts": str(time.time())}]}
    return urlencode({"payload": json.dumps(payload)}).encode()


def open_incident(client, make_key) -> str:
    response = client.post("/api/v1/incidents", headers={"X-API-Key": make_key("incident:write")},
                           json={"title": "Latency Spike Detected", "severity": "P1", "source": "llm-sentinel",
                                 "description": "95th percentile latency exceeded threshold by 270%"})
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()["id"]


def configure(outbound_config, **slack) -> None:
    outbound_config({"notifications": {"slack": {"enabled": True, "webhook_url": "https://hooks.slack.com/x",
                                                 "signing_secret": SECRET, **slack},
                                       "http": {"allow_private": ["127.0.0.1/32"]}}})


URL = "/api/v1/integrations/slack/actions"


def test_a_signed_button_press_acknowledges_as_the_slack_user(outbound_config, client, make_key):
    configure(outbound_config)
    incident_id = open_incident(client, make_key)
    body = button_press(incident_id)
    response = client.post(URL, data=body, headers=signed(body))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["text"] == f"{incident_id} acknowledged by jane.doe"
    incident = get_incident(incident_id)
    assert incident["status"] == "ACKNOWLEDGED" and incident["acknowledged_by"] == "slack:jane.doe"
    again = client.post(URL, data=body, headers=signed(body))
    assert again.status_code == 200 and "already ACKNOWLEDGED" in again.get_json()["text"]


def test_forged_missing_and_stale_signatures_acknowledge_nothing(outbound_config, client, make_key):
    configure(outbound_config)
    incident_id = open_incident(client, make_key)
    body = button_press(incident_id)
    cases = {
        "wrong secret": signed(body, secret="not-the-secret"),
        "other body": signed(button_press(incident_id, username="mallory")),
        "stale (301 s old)": signed(body, at=int(time.time()) - 301),
        "from the future": signed(body, at=int(time.time()) + 301),
        "no signature": {"Content-Type": "application/x-www-form-urlencoded"},
        "garbled timestamp": {**signed(body), "X-Slack-Request-Timestamp": "yesterday"},
    }
    for case, headers in cases.items():
        response = client.post(URL, data=body, headers=headers)
        assert response.status_code == 401, case
        assert response.get_json()["error"]["code"] == "unauthenticated", case
    assert get_incident(incident_id)["status"] == "NEW"
    # a signature within the window but not the newest is still accepted (Slack retries within it)
    assert client.post(URL, data=body, headers=signed(body, at=int(time.time()) - 250)).status_code == 200
    assert get_incident(incident_id)["status"] == "ACKNOWLEDGED"


def test_unknown_incidents_other_actions_and_bad_bodies(outbound_config, client):
    configure(outbound_config)
    body = button_press("INC-20990101-00001")
    response = client.post(URL, data=body, headers=signed(body))
    assert response.status_code == 200 and "does not exist" in response.get_json()["text"]
    other = urlencode({"payload": json.dumps({"type": "view_submission"})}).encode()
    assert "nothing to do" in client.post(URL, data=other, headers=signed(other)).get_json()["text"]
    garbage = b"payload=%7Bnot-json"
    bad = client.post(URL, data=garbage, headers=signed(garbage))
    assert bad.status_code == 400 and "payload" in bad.get_json()["error"]["message"]


def test_without_a_signing_secret_the_endpoint_is_off(outbound_config, client, make_key):
    outbound_config({})
    body = button_press("INC-20990101-00001")
    response = client.post(URL, data=body, headers=signed(body))
    assert response.status_code == 503 and "signing_secret" in response.get_json()["error"]["message"]


def test_with_a_bot_token_the_message_is_updated(outbound_config, client, make_key, httpserver: HTTPServer,
                                                  start_worker):
    configure(outbound_config, webhook_url="", bot_token="xoxb-test",
              api_url=f"http://127.0.0.1:{httpserver.port}/api", channel_routing=[{"default": "#incidents"}])
    httpserver.expect_request("/api/chat.update").respond_with_json({"ok": True})
    start_worker(queues="notifications", concurrency=1)
    incident_id = open_incident(client, make_key)
    body = button_press(incident_id)
    assert client.post(URL, data=body, headers=signed(body)).status_code == 200

    def updated():
        return [r for r, _ in httpserver.log if r.path == "/api/chat.update"]

    [request] = wait_for(updated, timeout=60, message="chat.update from the worker")
    sent = request.get_json()
    assert sent["channel"] == "C0CRIT" and sent["ts"] == "1731321000.000100"
    assert sent["blocks"][1]["fields"][1]["text"] == "*Status:*\nACKNOWLEDGED"


def test_a_message_we_posted_is_updated_once(outbound_config, client, make_key, httpserver: HTTPServer,
                                             start_worker):
    """The acknowledge's lifecycle record redraws the messages the incident's posts left; the button's
    own refresh is only for a message we hold no reference to, so Slack sees one chat.update, not two."""
    from datetime import datetime, timezone

    from app.adapters.db import unit_of_work
    from app.adapters.escalation_models import NotificationDelivery

    configure(outbound_config, webhook_url="", bot_token="xoxb-test",
              api_url=f"http://127.0.0.1:{httpserver.port}/api", channel_routing=[{"default": "#incidents"}])
    httpserver.expect_request("/api/chat.update").respond_with_json({"ok": True})
    incident_id = open_incident(client, make_key)
    now = datetime.now(timezone.utc)
    with unit_of_work() as session:  # the page the escalation posted, as the sender records it
        session.add(NotificationDelivery(
            incident_id=incident_id, escalation_token="t", step="c0.l1", level=1, channel="slack",
            target_type="user", target_id="alice", recipient="alice", status="sent", attempts=1,
            idempotency_key=f"{incident_id}:c0.l1:alice:slack", created_at=now, updated_at=now,
            reason={"delivery": {"reference": {"channel": "C0CRIT", "ts": "1731321000.000100"}}}))
    start_worker(queues="notifications", concurrency=1, beat=True)  # beat dispatches records
    body = button_press(incident_id)
    assert client.post(URL, data=body, headers=signed(body)).status_code == 200

    def updated():
        return [r for r, _ in httpserver.log if r.path == "/api/chat.update"]

    wait_for(updated, timeout=60, message="chat.update from the worker")
    time.sleep(3)  # a second update, had one been queued, goes out within this
    [request] = updated()
    assert request.get_json()["ts"] == "1731321000.000100"
    assert request.get_json()["blocks"][1]["fields"][1]["text"] == "*Status:*\nACKNOWLEDGED"
