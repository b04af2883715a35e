"""PagerDuty Events API v2 out: trigger with the guide's §6 payload, acknowledge and resolve mirrored
on the same `dedup_key` (the incident id, so PagerDuty folds repeats of one step into one alert)."""

from __future__ import annotations

from typing import Any, Mapping

from app.adapters import http_client
from app.adapters.channels import Sent, counted, json_body
from app.config.outbound import OutboundSettings

ACTIONS = ("trigger", "acknowledge", "resolve")


def event(incident: Mapping[str, Any], outbound: OutboundSettings, action: str = "trigger") -> dict[str, Any]:
    """The Events API v2 body. `trigger` carries the guide's payload and links; acknowledge and
    resolve carry only the routing key, action and dedup key, as the API asks."""
    if action not in ACTIONS:
        raise ValueError(f"unknown PagerDuty action {action!r}")
    pagerduty = outbound.pagerduty
    incident_id = str(incident.get("id"))
    body: dict[str, Any] = {"routing_key": pagerduty.routing_key(incident), "event_action": action,
                            "dedup_key": incident_id}
    if action != "trigger":
        return body
    resource = incident.get("resource") or {}
    body["payload"] = {
        "summary": f"{incident.get('severity')}: {incident.get('title')}",
        "source": incident.get("source"),
        "severity": pagerduty.severity_mapping.get(str(incident.get("severity")), "error"),
        "timestamp": incident.get("first_seen") or incident.get("created_at"),
        "custom_details": {
            "incident_id": incident_id,
            "category": incident.get("category"),
            "resource": resource.get("name") or resource.get("id") if isinstance(resource, Mapping) else resource,
            "metrics": incident.get("metrics") or {},
        },
    }
    body["links"] = [{"href": outbound.incident_url(incident_id), "text": "View Incident"}]
    return body


def send(incident: Mapping[str, Any], outbound: OutboundSettings, action: str = "trigger") -> Sent:
    """Send one event; 429 and 5xx are retried by the client, 400 (an invalid event) is not."""

    def go() -> Sent:
        body = event(incident, outbound, action)
        answer = http_client.send("pagerduty", "POST", outbound.pagerduty.events_url, content=json_body(body),
                                  headers={"Content-Type": "application/json"})
        reply = answer.json() or {}
        return Sent("pagerduty", body["routing_key"][:6] + "…", answer.status, answer.attempts,
                    {"dedup_key": reply.get("dedup_key", body["dedup_key"]), "action": action})

    return counted("pagerduty", go)
