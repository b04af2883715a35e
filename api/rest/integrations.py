"""Inbound compatibility doors: the Alertmanager webhook (payload version 4) and PagerDuty's Events
API v2, so anything that can notify Alertmanager receivers or page PagerDuty can page us."""

from __future__ import annotations

from typing import Any, Mapping

from flask import Blueprint, jsonify, request
from prometheus_client import Counter

from api.auth import current_principal, enforce
from api.body import json_object
from api.errors import ApiError
from api.links import incident_links
from api.openapi import doc
from app.services.alertmanager import handle_alertmanager, parse_alertmanager
from app.services.auth import AuthError, Principal, authenticate_api_key
from app.services.pagerduty import handle_pagerduty, parse_pagerduty
from app.services.payloads import InvalidPayload
from tasks.dispatch import dispatch_pipeline

bp = Blueprint("integrations", __name__)

INTEGRATION_REQUESTS = Counter(
    "incident_manager_integration_requests_total", "Alertmanager / PagerDuty inbound requests",
    ["integration", "outcome"],
)


@bp.post("/api/v1/integrations/alertmanager")
@doc(permission="event:create", responses={
    202: "Accepted: one result per alert (accepted, duplicate, resolved, not_open)", 400: "", 413: "", 415: "",
    422: "Not a version 4 webhook payload; per-field messages in error.details"})
def alertmanager_webhook() -> Any:
    """Alertmanager webhook v4: firing alerts are ingested, resolved alerts resolve their incident."""
    enforce(current_principal(), "event:create")
    try:
        batch = parse_alertmanager(json_object())
    except InvalidPayload as exc:
        INTEGRATION_REQUESTS.labels("alertmanager", "invalid").inc()
        raise ApiError(422, exc.code, exc.message, exc.details) from None
    outcomes = handle_alertmanager(batch, dispatch_pipeline)
    INTEGRATION_REQUESTS.labels("alertmanager", "ok").inc()
    return jsonify({
        "status": "accepted",
        "results": [{"status": o.status, "alert": o.alert, "incident_id": o.incident_id,
                     "links": incident_links(o.incident_id)} for o in outcomes],
    }), 202


def _pagerduty_principal(body: Mapping[str, Any]) -> Principal:
    """X-API-Key / Authorization header when sent, else the event's routing_key (an API key)."""
    if request.headers.get("X-API-Key") or request.headers.get("Authorization"):
        return current_principal()
    routing_key = body.get("routing_key")
    if not isinstance(routing_key, str) or not routing_key:
        raise AuthError("missing credentials: put an API key in routing_key (or X-API-Key)")
    return authenticate_api_key(routing_key)


@bp.post("/api/v1/integrations/pagerduty/enqueue")
@doc(permission="event:create", responses={
    202: "{status: success, message: Event processed, dedup_key, incident_id}",
    400: "Invalid event (PagerDuty's shape: status, message, errors, beside error) or malformed JSON", 413: "",
    415: ""})
def pagerduty_enqueue() -> Any:
    """PagerDuty Events API v2: trigger / acknowledge / resolve by dedup_key; answers as PagerDuty."""
    body = json_object()
    enforce(_pagerduty_principal(body), "event:create")
    try:
        command = parse_pagerduty(body)
    except InvalidPayload as exc:
        INTEGRATION_REQUESTS.labels("pagerduty", "invalid").inc()
        # PagerDuty's own shape (status, message, errors) beside ours (error.code/message/details).
        response = jsonify({
            "status": "invalid event", "message": exc.message,
            "errors": [f"{field} {'; '.join(msgs)}" for field, msgs in exc.details.items()],
            "error": {"code": "invalid_event", "message": exc.message, "details": exc.details},
        })
        response.status_code = 400
        return response
    outcome = handle_pagerduty(command, dispatch_pipeline)
    INTEGRATION_REQUESTS.labels("pagerduty", command.action).inc()
    return jsonify({"status": "success", "message": "Event processed", "dedup_key": outcome.dedup_key,
                    "incident_id": outcome.incident_id}), 202


