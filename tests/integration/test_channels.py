"""Every channel against a real receiver on loopback, asserting the exact payload it received:
Slack (webhook and bot token, guide §6 blocks, routing, mentions, chat.update), PagerDuty Events v2
(guide §6), JIRA REST v3 (guide §7), custom webhooks (guide §8: template, auth, signature, triggers),
email over SMTP (aiosmtpd, STARTTLS with a certificate the client verifies)."""

from __future__ import annotations

import base64
import datetime as dt
import email as email_lib
import hashlib
import hmac
import json
import socket
import ssl
import time
from email.message import Message
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiosmtpd.controller import Controller
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from app.adapters.channels import email as email_channel
from app.adapters.channels import jira, pagerduty, slack, webhook
from app.adapters.http_client import DeliveryError
from app.config.outbound import get_outbound_settings
from app.services import circuit_breakers as cb
from tests.outbound import GUIDE_TEMPLATE

GUIDE_INCIDENT: dict[str, Any] = {
    "id": "INC-20251111-00042", "title": "Latency Spike Detected",
    "description": "95th percentile latency exceeded threshold by 270%", "status": "NEW", "severity": "P1",
    "category": "performance", "source": "llm-sentinel", "service": "chat-api",
    "first_seen": "2025-11-11T10:30:00Z", "created_at": "2025-11-11T10:30:01Z",
    "resource": {"type": "endpoint", "id": "chat-completions", "name": "/v1/chat/completions"},
    "metrics": {"p95_latency_ms": 5400, "threshold_ms": 2000},
}
GUIDE_BLOCKS = json.loads("""[
    {"type": "header", "text": {"type": "plain_text", "text": " P1 Incident: Latency Spike Detected"}},
    {"type": "section", "fields": [
        {"type": "mrkdwn", "text": "*Incident ID:*\\nINC-20251111-00042"},
        {"type": "mrkdwn", "text": "*Status:*\\nNEW"},
        {"type": "mrkdwn", "text": "*Severity:*\\nP1"},
        {"type": "mrkdwn", "text": "*Category:*\\nPerformance"}]},
    {"type": "section", "text": {"type": "mrkdwn",
        "text": "*Description:*\\n95th percentile latency exceeded threshold by 270%"}},
    {"type": "actions", "elements": [
        {"type": "button", "text": {"type": "plain_text", "text": "Acknowledge"}, "value": "INC-20251111-00042",
         "action_id": "acknowledge_incident"},
        {"type": "button", "text": {"type": "plain_text", "text": "View Details"},
         "url": "https://incidents.example.com/incidents/INC-20251111-00042"}]}
]""")
BASE = {"notifications": {"http": {"allow_private": ["127.0.0.1/32"], "backoff_initial_secs": 0.01,
                                   "backoff_max_secs": 0.05},
                          "incident_url_template": "https://incidents.example.com/incidents/{id}"},
        "circuit_breakers": {"slack": {"rate_limit": {"requests_per_minute": 0}},
                             "pagerduty": {"rate_limit": {"requests_per_minute": 0}}}}


def configure(outbound_config, notifications: dict | None = None, integrations: dict | None = None):
    tree = json.loads(json.dumps(BASE))
    tree["notifications"].update(notifications or {})
    if integrations:
        tree["integrations"] = integrations
    outbound_config(tree)
    return get_outbound_settings()


def at(server: HTTPServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def received(server: HTTPServer, path: str) -> list[Request]:
    return [request for request, _ in server.log if request.path == path]


# ------------------------------------------------------------------------------- Slack

def slack_config(server: HTTPServer, **extra: Any) -> dict[str, Any]:
    return {"slack": {"enabled": True, "webhook_url": at(server, "/services/T0/B0/secret"),
                      "channel_routing": [{"severity": ["P0", "P1"], "channel": "#incidents-critical"},
                                          {"severity": ["P2"], "channel": "#incidents-medium"},
                                          {"category": ["security"], "channel": "#security-alerts"},
                                          {"default": "#incidents-general"}],
                      "message_format": "blocks", "mention_on_create": True,
                      "mention_groups": {"P0": ["@oncall", "@incident-commander"]}, **extra}}


def test_slack_webhook_posts_the_guides_blocks(outbound_config, httpserver: HTTPServer):
    outbound = configure(outbound_config, slack_config(httpserver))
    httpserver.expect_request("/services/T0/B0/secret", method="POST").respond_with_data("ok")
    sent = slack.post(GUIDE_INCIDENT, outbound)
    assert sent.status_code == 200 and sent.target == "webhook"
    [request] = received(httpserver, "/services/T0/B0/secret")
    assert request.headers["Content-Type"] == "application/json"
    assert request.get_json() == {"text": "P1 Incident: Latency Spike Detected (INC-20251111-00042)",
                                  "blocks": GUIDE_BLOCKS}


def test_slack_mention_groups_per_severity_on_creation(outbound_config, httpserver: HTTPServer):
    outbound = configure(outbound_config, slack_config(httpserver))
    httpserver.expect_request("/services/T0/B0/secret").respond_with_data("ok")
    slack.post({**GUIDE_INCIDENT, "severity": "P0"}, outbound)
    body = received(httpserver, "/services/T0/B0/secret")[0].get_json()
    assert body["text"].startswith("@oncall @incident-commander P0 Incident:") and body["link_names"] is True
    assert body["blocks"][0]["text"]["text"] == " P0 Incident: Latency Spike Detected"
    assert slack.message({**GUIDE_INCIDENT, "severity": "P0"}, outbound, "incident_updated")["text"].startswith("P0")


def test_slack_bot_routes_posts_and_updates(outbound_config, httpserver: HTTPServer):
    outbound = configure(outbound_config, slack_config(httpserver, webhook_url="", bot_token="xoxb-test",
                                                       api_url=at(httpserver, "/api")))
    httpserver.expect_request("/api/chat.postMessage", method="POST",
                              headers={"Authorization": "Bearer xoxb-test"}).respond_with_json(
        {"ok": True, "channel": "C0CRIT", "ts": "1731321000.000100"})
    httpserver.expect_request("/api/chat.update", method="POST").respond_with_json(
        {"ok": True, "channel": "C0CRIT", "ts": "1731321000.000100"})
    sent = slack.post(GUIDE_INCIDENT, outbound)
    assert sent.reference == {"channel": "C0CRIT", "ts": "1731321000.000100"}
    posted = received(httpserver, "/api/chat.postMessage")[0].get_json()
    assert posted["channel"] == "#incidents-critical" and posted["blocks"] == GUIDE_BLOCKS

    for incident, channel in (({**GUIDE_INCIDENT, "severity": "P2"}, "#incidents-medium"),
                              ({**GUIDE_INCIDENT, "severity": "P3", "category": "security"}, "#security-alerts"),
                              ({**GUIDE_INCIDENT, "severity": "P4"}, "#incidents-general")):
        assert slack.channel_for(incident, outbound.slack) == channel

    acknowledged = {**GUIDE_INCIDENT, "status": "ACKNOWLEDGED"}
    slack.update(acknowledged, outbound, "C0CRIT", "1731321000.000100")
    updated = received(httpserver, "/api/chat.update")[0].get_json()
    assert updated["channel"] == "C0CRIT" and updated["ts"] == "1731321000.000100"
    assert updated["blocks"][1]["fields"][1]["text"] == "*Status:*\nACKNOWLEDGED"
    assert [e["text"]["text"] for e in updated["blocks"][3]["elements"]] == ["View Details"]


def test_slack_api_errors(outbound_config, httpserver: HTTPServer):
    outbound = configure(outbound_config, slack_config(httpserver, webhook_url="", bot_token="xoxb-test",
                                                       api_url=at(httpserver, "/api")))
    httpserver.expect_request("/api/chat.postMessage").respond_with_json({"ok": False, "error": "channel_not_found"})
    with pytest.raises(DeliveryError) as failed:
        slack.post(GUIDE_INCIDENT, outbound)
    assert not failed.value.retryable and "channel_not_found" in str(failed.value)


# ------------------------------------------------------------------------------- PagerDuty

def pd_config(server: HTTPServer) -> dict[str, Any]:
    return {"pagerduty": {"enabled": True, "integration_key": "R0UTINGKEYDEFAULT",
                          "events_url": at(server, "/v2/enqueue"),
                          "service_routing": [{"severity": ["P0", "P1"], "service_id": "PXXXXXX"},
                                              {"severity": ["P2"], "service_id": "PYYYYYY"},
                                              {"default": "PZZZZZZ"}],
                          "routing_keys": {"PXXXXXX": "R0UTINGKEYCRITICAL", "PYYYYYY": "R0UTINGKEYMEDIUM",
                                           "PZZZZZZ": "R0UTINGKEYOTHER"},
                          "auto_resolve": True}}


def test_pagerduty_trigger_acknowledge_resolve(outbound_config, httpserver: HTTPServer):
    outbound = configure(outbound_config, pd_config(httpserver))
    httpserver.expect_request("/v2/enqueue", method="POST").respond_with_json(
        {"status": "success", "message": "Event processed", "dedup_key": "INC-20251111-00042"}, status=202)
    sent = pagerduty.send(GUIDE_INCIDENT, outbound, "trigger")
    assert sent.status_code == 202 and sent.reference["dedup_key"] == "INC-20251111-00042"
    pagerduty.send(GUIDE_INCIDENT, outbound, "acknowledge")
    pagerduty.send(GUIDE_INCIDENT, outbound, "resolve")
    trigger, ack, resolve = [r.get_json() for r in received(httpserver, "/v2/enqueue")]
    assert trigger == {
        "routing_key": "R0UTINGKEYCRITICAL", "event_action": "trigger", "dedup_key": "INC-20251111-00042",
        "payload": {"summary": "P1: Latency Spike Detected", "source": "llm-sentinel", "severity": "critical",
                    "timestamp": "2025-11-11T10:30:00Z",
                    "custom_details": {"incident_id": "INC-20251111-00042", "category": "performance",
                                       "resource": "/v1/chat/completions",
                                       "metrics": {"p95_latency_ms": 5400, "threshold_ms": 2000}}},
        "links": [{"href": "https://incidents.example.com/incidents/INC-20251111-00042", "text": "View Incident"}]}
    assert ack == {"routing_key": "R0UTINGKEYCRITICAL", "event_action": "acknowledge",
                   "dedup_key": "INC-20251111-00042"}
    assert resolve["event_action"] == "resolve" and resolve["dedup_key"] == "INC-20251111-00042"
    assert pagerduty.event({**GUIDE_INCIDENT, "severity": "P2"}, outbound)["routing_key"] == "R0UTINGKEYMEDIUM"
    p4 = pagerduty.event({**GUIDE_INCIDENT, "severity": "P4"}, outbound)
    assert p4["routing_key"] == "R0UTINGKEYOTHER" and p4["payload"]["severity"] == "info"


def test_pagerduty_429_and_5xx_are_retried_400_is_not(outbound_config, httpserver: HTTPServer):
    outbound = configure(outbound_config, pd_config(httpserver))
    httpserver.expect_ordered_request("/v2/enqueue").respond_with_json({"status": "throttled"}, status=429)
    httpserver.expect_ordered_request("/v2/enqueue").respond_with_data("bad gateway", status=502)
    httpserver.expect_ordered_request("/v2/enqueue").respond_with_json({"status": "success"}, status=202)
    assert pagerduty.send(GUIDE_INCIDENT, outbound).attempts == 3
    httpserver.clear()
    httpserver.expect_request("/v2/enqueue").respond_with_json(
        {"status": "invalid event", "errors": ["'payload.summary' is missing"]}, status=400)
    with pytest.raises(DeliveryError) as failed:
        pagerduty.send(GUIDE_INCIDENT, outbound)
    assert failed.value.status == 400 and not failed.value.retryable and len(received(httpserver, "/v2/enqueue")) == 1


# ------------------------------------------------------------------------------- JIRA

def test_jira_issue_as_the_guide(outbound_config, httpserver: HTTPServer):
    outbound = configure(outbound_config, integrations={"jira": {
        "enabled": True, "base_url": at(httpserver, ""),
        "authentication": {"type": "basic", "username": "bot@example.com", "api_token": "tok3n"},
        "project_mapping": [{"category": ["security"], "project_key": "SEC", "issue_type": "Security Incident"},
                            {"category": ["performance", "availability"], "project_key": "OPS",
                             "issue_type": "Incident"},
                            {"default": None, "project_key": "INCIDENT", "issue_type": "Bug"}],
        "field_mapping": {"severity": {"P1": "High"}, "priority": {"P0": "Highest", "P1": "High"}},
        "sync": {"enabled": True, "bidirectional": True, "sync_interval_seconds": 300}}})
    expected_auth = "Basic " + base64.b64encode(b"bot@example.com:tok3n").decode()
    httpserver.expect_request("/rest/api/3/issue", method="POST", headers={"Authorization": expected_auth}) \
        .respond_with_json({"id": "10042", "key": "OPS-42", "self": "x"}, status=201)
    sent = jira.create_issue(GUIDE_INCIDENT, outbound)
    assert sent.status_code == 201 and sent.reference == {"key": "OPS-42", "id": "10042"}
    body = received(httpserver, "/rest/api/3/issue")[0].get_json()
    assert body == {"fields": {
        "project": {"key": "OPS"}, "summary": "[INC-20251111-00042] Latency Spike Detected",
        "description": {"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
            {"type": "text", "text": "95th percentile latency exceeded threshold by 270%"}]}]},
        "issuetype": {"name": "Incident"}, "priority": {"name": "High"},
        "labels": ["llm-incident-manager", "automated", "performance"],
        "customfield_10001": "INC-20251111-00042"}}
    security = jira.issue({**GUIDE_INCIDENT, "category": "security", "severity": "P0"}, outbound)["fields"]
    assert security["project"] == {"key": "SEC"} and security["issuetype"] == {"name": "Security Incident"}
    assert security["priority"] == {"name": "Highest"}
    other = jira.issue({**GUIDE_INCIDENT, "category": "quality"}, outbound)["fields"]
    assert other["project"] == {"key": "INCIDENT"} and other["issuetype"] == {"name": "Bug"}


# ------------------------------------------------------------------------------- webhooks



def hook_config(server: HTTPServer, **extra: Any) -> dict[str, Any]:
    return {"webhooks": [{
        "name": "custom-monitoring-system", "enabled": True, "url": at(server, "/webhooks/incidents"),
        "authentication": {"type": "bearer", "token": "m0nitor-token"},
        "triggers": [{"event": "incident_created", "conditions": {"severity": ["P0", "P1"]}},
                     {"event": "incident_resolved"}, {"event": "sla_breached"}],
        "method": "POST", "headers": {"Content-Type": "application/json", "X-Source": "llm-incident-manager"},
        "payload_template": GUIDE_TEMPLATE, "retry": {"max_attempts": 3, "backoff": "exponential"},
        "timeout_ms": 10000, **extra}]}


def test_webhook_renders_the_guides_template_with_auth_and_signature(outbound_config, httpserver: HTTPServer):
    outbound = configure(outbound_config, integrations=hook_config(httpserver, signing_secret="s1gning"))
    [hook] = outbound.webhooks
    assert "custom-monitoring-system" in cb.names()
    httpserver.expect_request("/webhooks/incidents", method="POST").respond_with_data("", status=204)
    before = int(time.time())
    sent = webhook.send(hook, outbound, "incident_created", GUIDE_INCIDENT, "INC-20251111-00042:c0.l1:alice:webhook")
    assert sent.status_code == 204
    [request] = received(httpserver, "/webhooks/incidents")
    body = json.loads(request.get_data())
    assert body["event_type"] == "incident_created" and body["incident"] == {
        "id": "INC-20251111-00042", "title": "Latency Spike Detected", "severity": "P1", "status": "NEW",
        "url": "https://incidents.example.com/incidents/INC-20251111-00042"}
    assert abs(dt.datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")).timestamp() - before) < 60
    assert request.headers["Authorization"] == "Bearer m0nitor-token"
    assert request.headers["X-Source"] == "llm-incident-manager"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"] == "INC-20251111-00042:c0.l1:alice:webhook"
    assert request.headers["X-Incident-Manager-Event"] == "incident_created"
    stamp, digest = (part.split("=", 1)[1] for part in request.headers["X-Incident-Manager-Signature"].split(","))
    expected = hmac.new(b"s1gning", f"{stamp}.".encode() + request.get_data(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(digest, expected) and abs(int(stamp) - before) < 60


def test_webhook_triggers_and_conditions(outbound_config, httpserver: HTTPServer):
    outbound = configure(outbound_config, integrations=hook_config(httpserver))
    p3 = {**GUIDE_INCIDENT, "severity": "P3"}
    assert [h.name for h in webhook.matching(outbound, "incident_created", GUIDE_INCIDENT)] == [
        "custom-monitoring-system"]
    assert webhook.matching(outbound, "incident_created", p3) == []
    assert len(webhook.matching(outbound, "incident_resolved", p3)) == 1
    assert webhook.matching(outbound, "incident_acknowledged", GUIDE_INCIDENT) == []


def test_webhook_timeout_is_retried_then_fails(outbound_config, httpserver: HTTPServer):
    outbound = configure(outbound_config, integrations=hook_config(httpserver, timeout_ms=200,
                                                                   retry={"max_attempts": 2}))

    def slow(request: Request) -> Response:
        time.sleep(0.6)
        return Response("late")

    httpserver.expect_request("/webhooks/incidents").respond_with_handler(slow)
    with pytest.raises(DeliveryError) as failed:
        webhook.send(outbound.webhooks[0], outbound, "incident_resolved", GUIDE_INCIDENT, "k")
    assert failed.value.kind == "transport" and failed.value.attempts == 2 and failed.value.retryable
    assert cb.info("custom-monitoring-system")["failed_requests"] == 2


def test_webhook_configuration_errors_name_the_key(outbound_config, httpserver: HTTPServer):
    from app.config import ConfigError

    outbound_config({"integrations": hook_config(httpserver, payload_template='{"x": "{{ incident.__class__ }}"}')})
    with pytest.raises(ConfigError, match=r"integrations.webhooks\[0\].payload_template: line 1: access to "
                                          r"'__class__' is not allowed"):
        get_outbound_settings()
    outbound_config({"integrations": hook_config(httpserver, triggers=[{"event": "incident_exploded"}])})
    with pytest.raises(ConfigError, match=r"integrations.webhooks\[0\].triggers\[0\].event"):
        get_outbound_settings()


# ------------------------------------------------------------------------------- email

class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                              email_lib.message_from_bytes(envelope.content)))
        return "250 OK"


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "smtp.pem", tmp_path / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[tuple[Recorder, int, Path]]:
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    recorder = Recorder()
    with socket.socket() as probe:  # aiosmtpd's start() connects to its port: it needs a real one up front
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(recorder, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True)
    controller.start()
    try:
        yield recorder, port, cert
    finally:
        controller.stop()


def test_email_over_starttls_with_text_and_html(outbound_config, smtp_server):
    recorder, port, cert = smtp_server
    outbound = configure(outbound_config, {"email": {
        "enabled": True, "host": "127.0.0.1", "port": port, "security": "starttls", "ca_file": str(cert),
        "from": "incidents@example.com", "to": ["oncall@example.com"]}})
    sent = email_channel.send(GUIDE_INCIDENT, outbound, idempotency_key="INC-20251111-00042:c0.l1:alice:email")
    assert sent.status_code == 250
    [(sender, recipients, message)] = recorder.messages
    assert sender == "incidents@example.com" and recipients == ["oncall@example.com"]
    assert message["Subject"] == "[P1] INC-20251111-00042: Latency Spike Detected"
    assert message["Message-ID"] == "<INC-20251111-00042.c0.l1.alice.email@example.com>"
    assert message["X-Incident-ID"] == "INC-20251111-00042"
    text, html_part = message.get_payload()
    assert text.get_content_type() == "text/plain" and html_part.get_content_type() == "text/html"
    plain = text.get_payload(decode=True).decode()
    assert "P1 Incident: Latency Spike Detected" in plain and "Category: Performance" in plain
    assert "95th percentile latency exceeded threshold by 270%" in plain
    assert "View details: https://incidents.example.com/incidents/INC-20251111-00042" in plain
    markup = html_part.get_payload(decode=True).decode()
    assert "<h2>P1 Incident: Latency Spike Detected</h2>" in markup
    assert '<a href="https://incidents.example.com/incidents/INC-20251111-00042">' in markup


def test_email_refuses_an_unverified_certificate_and_counts_it(outbound_config, smtp_server):
    recorder, port, _ = smtp_server
    outbound = configure(outbound_config, {"email": {"enabled": True, "host": "127.0.0.1", "port": port,
                                                     "security": "starttls", "to": ["oncall@example.com"]}})
    with pytest.raises(DeliveryError) as failed:
        email_channel.send(GUIDE_INCIDENT, outbound)
    assert "CERTIFICATE_VERIFY_FAILED" in str(failed.value) and failed.value.retryable
    assert recorder.messages == [] and cb.info("email")["failed_requests"] == 3


def test_email_without_a_recipient_is_refused(outbound_config):
    outbound = configure(outbound_config, {"email": {"enabled": True}})
    with pytest.raises(DeliveryError, match="no recipient"):
        email_channel.send(GUIDE_INCIDENT, outbound)
