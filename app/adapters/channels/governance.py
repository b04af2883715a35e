"""Governance audit push (integration guide §5): `POST {endpoint}` with `X-API-Key`, one audit event
as the guide shows it, or `{"events": [...]}` when batching is on."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Sequence

from app.adapters import http_client
from app.adapters.channels import Sent, counted, json_body
from app.config.outbound import OutboundSettings

# Actors that are the system itself, not a person (the timeline names them so).
SYSTEM_ACTORS = {"pipeline", "escalation", "sla", "system", "beat", "scheduler"}


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds").replace("+00:00", "Z")
    return str(value)


def actor(name: str) -> dict[str, str]:
    """`api:jane` / `slack:jane` / `jane` -> a user; the pipeline, escalation engine, integrations -> system."""
    kind, _, who = name.partition(":") if ":" in name else ("", "", name)
    if name in SYSTEM_ACTORS or name.startswith("llm-") or kind in ("integration",):
        return {"type": "system", "id": f"system-{name}", "name": name}
    return {"type": "user", "id": f"user-{who or name}", "name": who or name}


def audit_event(event_type: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """One timeline row as the guide's audit event; `event_id` is stable (the row's id) so a
    receiver can drop a repeat of an at-least-once push."""
    at = entry["at"]
    year = at.year if isinstance(at, datetime) else str(at)[:4]
    change: dict[str, Any] = {"field": entry.get("field") or event_type, "old_value": entry.get("old_value"),
                              "new_value": entry.get("new_value")}
    return {"event_id": f"audit-{year}-{int(entry['id']):06d}", "timestamp": _iso(at), "event_type": event_type,
            "incident_id": entry["incident_id"], "actor": actor(str(entry.get("actor") or "system")),
            "changes": [change]}


def push(events: Sequence[Mapping[str, Any]], outbound: OutboundSettings) -> Sent:
    """Send audit events: one request per event without batching, one `{"events": [...]}` with it."""
    audit = outbound.governance
    headers = {"Content-Type": "application/json", "X-API-Key": audit.api_key}

    def go() -> Sent:
        if audit.batching:
            answer = http_client.send("governance", "POST", audit.endpoint, content=json_body({"events": list(events)}),
                                      headers={**headers, "Idempotency-Key": f"{events[0]['event_id']}.."
                                                                              f"{events[-1]['event_id']}"})
            return Sent("governance", "audit", answer.status, answer.attempts, {"events": len(events)})
        attempts, status = 0, None
        for event in events:
            answer = http_client.send("governance", "POST", audit.endpoint, content=json_body(event),
                                      headers={**headers, "Idempotency-Key": str(event["event_id"])})
            attempts, status = attempts + answer.attempts, answer.status
        return Sent("governance", "audit", status, attempts, {"events": len(events)})

    return counted("governance", go)
